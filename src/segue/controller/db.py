"""The controller's database: an SQLAlchemy engine, sessions, and schema upgrades.

Any SQLAlchemy URL works: a SQLite file by default (``sqlite:////var/lib/segue/c.db``), or
PostgreSQL (``postgresql+psycopg://...``) for several controllers sharing one database. The
schema is created and upgraded by the Alembic migrations shipped inside this package
(``segue/controller/alembic``), run by ``Database.upgrade``.

Code on the controller's event loop never opens a session itself: it awaits ``Database.run``,
which runs a function of a session, as one transaction, in the database's own worker threads
(one for SQLite, so the controller's writes never wait on each other's file lock; a few for
other databases). A cancelled ``run`` still ends its transaction whole: one that had not
started never runs, one that had started commits or rolls back, and ``run`` returns (with
CancelledError) only once it has. What the function raises is raised as it is.

Errors: ``Unavailable`` (code ``DATABASE_UNAVAILABLE``) when the database cannot be opened
or upgraded, ``DATABASE_EMPTY`` for an empty one the controller was not asked to create;
``InvalidRequest`` (``DATABASE_URL_INVALID``) for a malformed URL.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from segue.domain.errors import InvalidRequest, Unavailable

MIGRATIONS_DIR = Path(__file__).with_name("alembic")
SERVER_WORKERS = 4  # worker threads for a database server (SQLite gets one)
P = ParamSpec("P")
T = TypeVar("T")


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
    """One database: ``run()`` for work from async code, ``session()`` for work in a thread
    (or a test), ``upgrade()`` for the schema, ``dispose()``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer per file: one thread keeps the controller's transactions in
        # the order they were asked for instead of waiting on each other's lock (and an
        # in-memory database has one connection for everybody).
        sqlite = self.engine.url.get_backend_name() == "sqlite"
        self._threads = ThreadPoolExecutor(1 if sqlite else SERVER_WORKERS,
                                           thread_name_prefix="segue-db")

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

    async def run(self, fn: Callable[Concatenate[Session, P], T], *args: P.args,
                  **kwargs: P.kwargs) -> T:
        """``fn(session, *args, **kwargs)`` in one transaction (``session``'s), in a worker
        thread, while the event loop goes on; its result, or what it raises. ``fn`` returns
        plain values (no ORM object: it would load lazily in another thread, on a closed
        session). Cancelled, it returns only once the transaction committed, rolled back or
        was never begun (the module doc), and raises CancelledError."""
        def transaction() -> T:
            with self.session() as session:
                return fn(session, *args, **kwargs)

        return await self.call(transaction)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in a worker thread (for work on the engine itself, such as
        ``upgrade``); cancelled, it waits for ``fn`` to end if it had started."""
        context = contextvars.copy_context()
        future: Future[T] = self._threads.submit(context.run, partial(fn, *args, **kwargs))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel():  # it runs: let it end whole before the caller goes on
                with suppress(Exception):
                    await asyncio.shield(asyncio.wrap_future(future))
            raise

    def dispose(self) -> None:
        """Wait for the work in the worker threads, then close every pooled connection."""
        self._threads.shutdown(wait=True)
        self.engine.dispose()
