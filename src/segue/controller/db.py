"""The controller's database: an SQLAlchemy engine, sessions, and schema upgrades.

Any SQLAlchemy URL works: a SQLite file by default (``sqlite:////var/lib/segue/c.db``), or
PostgreSQL (``postgresql+psycopg://...``) for several controllers sharing one database. The
schema is created and upgraded by the Alembic migrations shipped inside this package
(``segue/controller/alembic``), run by ``Database.upgrade``.

Errors: ``Unavailable`` (code ``DATABASE_UNAVAILABLE``) when the database cannot be opened
or upgraded, ``DATABASE_EMPTY`` for an empty one the controller was not asked to create;
``InvalidRequest`` (``DATABASE_URL_INVALID``) for a malformed URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from segue.domain.errors import InvalidRequest, Unavailable

MIGRATIONS_DIR = Path(__file__).with_name("alembic")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside the writer; SQLite enforces foreign keys only when asked."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a thread-shareable pool."""
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise InvalidRequest("DATABASE_URL_INVALID", f"{url!r} is not a database URL: {err}",
                             "use e.g. sqlite:////var/lib/segue/controller.db") from err
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    options: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if parsed.database in (None, "", ":memory:"):
        options["poolclass"] = StaticPool  # one connection, or every session sees a new DB
    else:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, **options)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Database:
    """One database: ``session()`` for work, ``upgrade()`` for the schema, ``dispose()``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade(self, create: bool = False) -> None:
        """Bring the schema to the newest migration (idempotent). An empty database (a new
        one, or one deleted under the controller) gets a schema only with ``create`` (an
        in-memory one always): starting empty would forget every VM's owner and every
        migration in flight. Raises Unavailable (``DATABASE_EMPTY``, ``DATABASE_UNAVAILABLE``
        for one that cannot be read, e.g. corrupt)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        try:
            with self.engine.begin() as connection:
                empty = not inspect(connection).get_table_names()
                if empty and not (create or self._in_memory()):
                    raise Unavailable(
                        "DATABASE_EMPTY",
                        f"the database {self.safe_url} holds no Segue cluster (new, or deleted)",
                        "for a new cluster, start the controller once with --create-database "
                        "(create_database = true); if it held a cluster, restore it from a "
                        "backup: an empty database forgets every VM's owner and every "
                        "migration in flight")
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except SQLAlchemyError as err:
            raise Unavailable("DATABASE_UNAVAILABLE",
                              f"cannot read or upgrade the database {self.safe_url}: {err}",
                              "check database_url in the controller configuration; a corrupt "
                              "database is restored from a backup, never recreated") from err

    def _in_memory(self) -> bool:
        return self.engine.url.get_backend_name() == "sqlite" and \
            self.engine.url.database in (None, "", ":memory:")

    @property
    def safe_url(self) -> str:
        """The URL without its password (for messages and logs)."""
        return make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block succeeds and rolls back when it raises.

        Objects stay usable (not expired) after the commit. Never hold one across an await
        that waits on the network: open a session per short piece of work.
        """
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
