"""One-time join tokens of hosts (their salted hashes).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.String(12), primary_key=True),
        sa.Column("host", sa.String(253), nullable=True),
        sa.Column("salt", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_by", sa.String(253), nullable=True),
    )
    op.create_index("ix_join_tokens_expires_at", "join_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_join_tokens_expires_at", "join_tokens")
    op.drop_table("join_tokens")
