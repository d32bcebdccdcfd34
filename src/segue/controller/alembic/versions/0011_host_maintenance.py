"""Host maintenance states: normal, entering-maintenance, in-maintenance, and why a host is
stuck entering.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-12
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("maintenance_state", sa.String(24), nullable=False,
                                   server_default="normal"))
        batch.add_column(sa.Column("maintenance_reason", sa.Text(), nullable=True))
    op.execute("UPDATE hosts SET maintenance_state = 'in-maintenance' WHERE maintenance")


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("maintenance_reason")
        batch.drop_column("maintenance_state")
