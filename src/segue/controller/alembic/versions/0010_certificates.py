"""Issued host certificates and revoked hosts.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "issued_certificates",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("issuer", sa.String(40), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_issued_certificates_host", "issued_certificates", ["host"])
    op.create_table(
        "host_revocations",
        sa.Column("host", sa.String(253), primary_key=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("revoked_by", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("host_revocations")
    op.drop_index("ix_issued_certificates_host", "issued_certificates")
    op.drop_table("issued_certificates")
