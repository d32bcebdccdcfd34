"""Returns after maintenance: an evacuation row's ``kind`` (evacuate, or return: the VMs an
evacuation moved, brought back by ``exit --return``) and a move's ``source`` (the host it
leaves, when not the evacuation's host).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("evacuations") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False,
                                   server_default="evacuate"))
    with op.batch_alter_table("evacuation_moves") as batch:
        batch.add_column(sa.Column("source", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evacuation_moves") as batch:
        batch.drop_column("source")
    with op.batch_alter_table("evacuations") as batch:
        batch.drop_column("kind")
