"""Maintenance evacuations: each evacuation of a host and each VM's planned destination or
blocker, its migration job and its phase.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-13
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "evacuations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(64), nullable=False, index=True),
        sa.Column("max_parallel", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("predicted_s", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "evacuation_moves",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("evacuation_id", sa.Integer(), sa.ForeignKey("evacuations.id"),
                  nullable=False, index=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("vm", sa.String(64), nullable=False),
        sa.Column("dest", sa.String(64), nullable=True),
        sa.Column("predicted_s", sa.Float(), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("blocker", sa.String(64), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("evacuation_moves")
    op.drop_table("evacuations")
