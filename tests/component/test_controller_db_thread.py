"""The controller's database work runs in a worker thread (``Database.run``): the event loop
goes on meanwhile, errors come back as they were raised, and a cancelled call leaves its
transaction whole (committed or rolled back, never half).

A slow SQL function (``slow(seconds)``, registered on every connection), or another
connection holding SQLite's write lock, makes a transaction take as long as the test needs;
the ticker measures how long the loop went without running.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import Session
from test_controller_queue import Moves, cluster, controller, copying, ended, migrate, wait_for

from segue.api.migration import MigrationOptionsBody
from segue.api.qemu import QueryMigrate
from segue.controller.db import Database
from segue.controller.migration_store import SqlJobStore
from segue.domain.errors import NotFound
from segue.engine.context import JobSpec
from segue.engine.phases import Phase
from segue.engine.progress import progress_from_query

SLOW_S = 0.5
TICK_S = 0.01


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A SQLite file with a table ``t(x)`` and the ``slow(seconds)`` SQL function; each
    call of ``slow`` sets ``db.slow_started`` before it sleeps."""
    database = Database(f"sqlite:///{tmp_path}/c.db")
    started = threading.Event()

    def slow(seconds: float) -> int:
        started.set()
        time.sleep(seconds)
        return 1

    def register(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function("slow", 1, slow)

    event.listen(database.engine, "connect", register)
    with database.engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (x TEXT)"))
    database.slow_started = started  # type: ignore[attr-defined]
    yield database
    database.dispose()


def rows(db: Database) -> list[str]:
    with db.engine.connect() as connection:
        return [r[0] for r in connection.execute(text("SELECT x FROM t ORDER BY x"))]


def insert_slowly(session: Session, first: str, second: str, seconds: float) -> None:
    """Insert ``first``, wait ``seconds`` inside the transaction, insert ``second``."""
    session.execute(text("INSERT INTO t VALUES (:x)"), {"x": first})
    session.execute(text("SELECT slow(:s)"), {"s": seconds})
    session.execute(text("INSERT INTO t VALUES (:x)"), {"x": second})


class Ticker:
    """Ticks every TICK_S on the loop; ``longest`` is the longest wait between two ticks."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    async def run(self) -> None:
        while True:
            self.stamps.append(time.monotonic())
            await asyncio.sleep(TICK_S)

    @property
    def longest(self) -> float:
        return max(b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False))


async def test_the_loop_keeps_ticking_while_a_slow_transaction_runs(db: Database) -> None:
    ticker = Ticker()
    async with asyncio.TaskGroup() as tg:
        ticking = tg.create_task(ticker.run())
        await asyncio.sleep(0.05)
        await db.run(insert_slowly, "a", "b", SLOW_S)
        await asyncio.sleep(0.05)
        ticking.cancel()
    assert rows(db) == ["a", "b"]
    # Blocked, the loop would not tick for the whole SLOW_S; the bound leaves room for a
    # busy machine without letting a blocked loop pass.
    assert ticker.longest < SLOW_S / 2, ticker.longest
    assert len(ticker.stamps) > SLOW_S / TICK_S / 4


async def test_an_error_in_the_worker_comes_back_with_its_code_and_rolls_back(
        db: Database) -> None:
    def insert_then_fail(session: Session) -> None:
        session.execute(text("INSERT INTO t VALUES ('lost')"))
        raise NotFound("FAKE_GONE", "not there", "look elsewhere", field="x")

    with pytest.raises(NotFound) as err:
        await db.run(insert_then_fail)
    assert (err.value.code, err.value.details) == ("FAKE_GONE", {"field": "x"})
    assert rows(db) == []


async def test_a_cancel_during_the_transaction_waits_for_it_to_commit_whole(
        db: Database) -> None:
    task = asyncio.create_task(db.run(insert_slowly, "a", "b", 0.3))
    assert await asyncio.to_thread(db.slow_started.wait, 5)  # type: ignore[attr-defined]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()  # CancelledError itself, never wrapped
    assert rows(db) == ["a", "b"]  # done before the cancelled call returned


async def test_a_cancel_before_the_transaction_began_runs_nothing(db: Database) -> None:
    busy = asyncio.create_task(db.run(insert_slowly, "a", "b", 0.3))
    assert await asyncio.to_thread(db.slow_started.wait, 5)  # type: ignore[attr-defined]
    waiting = asyncio.create_task(db.run(insert_slowly, "c", "d", 0.0))  # behind ``busy``
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await busy
    assert rows(db) == ["a", "b"]


async def test_a_progress_sample_waiting_for_the_file_lock_leaves_the_loop_free(
        tmp_path: Path) -> None:
    """The migration job's most frequent write, while another writer holds the SQLite file:
    the sample waits in the database's thread, the loop goes on, the sample lands after."""
    db = Database(f"sqlite:///{tmp_path}/c.db")
    db.upgrade(create=True)
    store = SqlJobStore(db)
    await store.create(JobSpec("j1", "web1", "host1", "host2", MigrationOptionsBody()),
                       lambda *_: Phase.CHECK, lambda _: "requested")
    progress = progress_from_query(QueryMigrate.model_validate(
        {"status": "active", "ram": {"transferred": 1 << 20}}))
    holder = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer (busy_timeout: 5 s)
    ticker = Ticker()
    try:
        async with asyncio.TaskGroup() as tg:
            ticking = tg.create_task(ticker.run())
            sample = tg.create_task(store.record_sample("j1", 1.5, progress))
            await asyncio.sleep(SLOW_S)
            assert not sample.done()  # still waiting for the lock, in its thread
            holder.execute("COMMIT")
            await sample
            ticking.cancel()
    finally:
        holder.close()
    assert ticker.longest < SLOW_S / 2, ticker.longest
    assert [(s.t, s.transferred) for s in await store.samples("j1")] == [(1.5, 1 << 20)]
    with pytest.raises(NotFound) as err:
        await store.phase("no-such-job")
    assert err.value.code == "MIGRATION_NOT_FOUND"
    db.dispose()


async def test_the_controller_answers_while_another_writer_holds_its_database(
        tmp_path: Path) -> None:
    """A whole controller (a job copying, a cancel of a queued job in flight) while the
    SQLite file is locked: the loop keeps ticking and answers /health; the cancel and the
    job's samples wait in the database's thread and go through once the lock is gone."""
    moves = Moves()
    async with controller(tmp_path, cluster(moves)) as c:
        first = await migrate(c, "web1", "host3")
        queued = await migrate(c, "web2", "host3")
        await wait_for(c, first, copying, "started copying")
        holder = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        ticker = Ticker()
        try:
            async with asyncio.TaskGroup() as tg:
                ticking = tg.create_task(ticker.run())
                cancel = tg.create_task(c.http.post(f"/migrations/{queued['id']}/cancel"))
                asked = time.monotonic()
                assert (await c.http.get("/health")).status_code == 200
                assert time.monotonic() - asked < SLOW_S / 2
                await asyncio.sleep(SLOW_S)
                assert not cancel.done()  # its transaction waits for the lock
                holder.execute("COMMIT")
                answer = await cancel
                ticking.cancel()
        finally:
            holder.close()
        assert ticker.longest < SLOW_S / 2, ticker.longest
        assert answer.status_code == 200, answer.text
        assert answer.json()["phase"] == "cancelled"
        moves.finish("web1")
        await wait_for(c, first, ended("completed"), "completed")
