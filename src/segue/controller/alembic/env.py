"""Alembic environment of the controller database.

``segue.controller.db.Database.upgrade`` runs it with an open connection in
``config.attributes["connection"]``. Run by the ``alembic`` command (to write a new
revision), it connects to ``sqlalchemy.url`` from the Alembic configuration instead.
SQLite cannot ALTER most things, so migrations render in batch mode there.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from segue.controller.schema import Base


def run_with(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported; give a database URL")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url in alembic.ini to run the alembic command")
    with create_engine(url).begin() as conn:
        run_with(conn)


run()
