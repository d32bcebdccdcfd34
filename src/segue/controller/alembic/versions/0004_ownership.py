"""Ownership: each VM's lease generation, every host's instances of it, one active job per VM.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

ACTIVE_JOB = "phase NOT IN ('completed', 'failed', 'cancelled')"


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=True))
    op.create_table(
        "vm_instances",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("vm_name", sa.String(64), nullable=False, index=True),
        sa.Column("host", sa.String(64), nullable=False, index=True),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=True),
        sa.Column("fenced", sa.Text(), nullable=True),
        sa.Column("migration_id", sa.String(64), nullable=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("vm_name", "host", name="uq_vm_instance_per_host"),
    )
    op.create_index("uq_active_migration_per_vm", "migrations", ["vm_name"], unique=True,
                    sqlite_where=sa.text(ACTIVE_JOB), postgresql_where=sa.text(ACTIVE_JOB))


def downgrade() -> None:
    op.drop_index("uq_active_migration_per_vm", table_name="migrations")
    op.drop_table("vm_instances")
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("generation")
