"""Placement rules: VM-VM affinity and anti-affinity, VM-host (must or should).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "placement_rules",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("strength", sa.String(8), nullable=False),
        sa.Column("vms", sa.JSON(), nullable=False),
        sa.Column("vm_tag", sa.String(64), nullable=True),
        sa.Column("host_tag", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("placement_rules")
