"""The typed QEMU migration layer (``segue.qemu.migration``, ``segue.qemu.machine``) against
the fake QEMU of the component tests, which speaks real QMP over a unix socket and migrates
over a real TCP stream (``tests/component/fake_qemu.py``)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from segue.api.qemu import MigrationStatus, QueryMigrate
from segue.domain.errors import Unavailable
from segue.qemu import process
from segue.qemu.machine import QemuMachine
from segue.qemu.migration import DirtyRateSample, QemuMigration, migration_event_status
from segue.qemu.qmp import QMPAnswerInvalid, QMPCommandFailed, QMPEvent, QMPSession

FAKE_QEMU = Path(__file__).parents[1] / "component" / "fake_qemu.py"
VM_UUID = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
FAST = {"max-bandwidth": 128 << 20}  # 64 MiB of guest RAM in 0.5 s
SLOW = {"max-bandwidth": 1 << 20}  # a minute


@dataclass
class Fake:
    """One fake QEMU and the typed layers over its QMP session."""

    pid: int
    qmp: QMPSession
    migration: QemuMigration
    machine: QemuMachine


Launch = Callable[..., Awaitable[Fake]]


@pytest.fixture
async def launch() -> AsyncIterator[Launch]:
    root = Path(tempfile.mkdtemp(prefix="segue-qm-"))  # short: unix socket paths
    started: list[Fake] = []

    async def start(name: str, incoming: bool = False) -> Fake:
        run = root / name
        run.mkdir()
        argv = [sys.executable, str(FAKE_QEMU), "-pidfile", str(run / "qemu.pid"),
                "-qmp", f"unix:{run / 'qmp.sock'},server=on,wait=off", "-uuid", VM_UUID,
                "-m", "64M", "-S", *(["-incoming", "defer"] if incoming else [])]
        pid = await process.launch_daemon(argv, run / "qemu.log", run / "qemu.pid",
                                          run / "qmp.sock", timeout=20)
        qmp = QMPSession(name)
        await qmp.connect(run / "qmp.sock", timeout=5)
        fake = Fake(pid, qmp, QemuMigration(qmp), QemuMachine(qmp))
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.qmp.close()
        await process.kill_hard(fake.pid)
    shutil.rmtree(root, ignore_errors=True)


async def running(launch: Launch, name: str = "src") -> Fake:
    fake = await launch(name)
    await fake.machine.cont()
    assert await fake.machine.status() == "running"
    return fake


async def until(fake: Fake, *statuses: MigrationStatus, timeout: float = 10) -> QueryMigrate:
    async with asyncio.timeout(timeout):
        while True:
            answer = await fake.migration.query()
            if answer.status in statuses:
                return answer
            await asyncio.sleep(0.02)


async def capabilities(fake: Fake) -> dict[str, bool]:
    raw = await fake.qmp.execute("query-migrate-capabilities")
    return {c["capability"]: c["state"] for c in raw}


# ---- setup ----

async def test_capabilities_always_turn_events_on(launch: Launch) -> None:
    fake = await launch("src")
    assert (await capabilities(fake))["events"] is False  # QEMU's default
    await fake.migration.set_capabilities({"xbzrle": True})
    caps = await capabilities(fake)
    assert caps["events"] is True and caps["xbzrle"] is True
    await fake.migration.set_capabilities({"events": False})  # never off: events are needed
    assert (await capabilities(fake))["events"] is True
    with pytest.raises(QMPCommandFailed):
        await fake.migration.set_capabilities({"no-such-capability": True})


async def test_parameters_round_trip_and_the_announce_ones(launch: Launch) -> None:
    fake = await launch("dst", incoming=True)
    await fake.migration.set_parameters({"downtime-limit": 450, "announce-initial": 1})
    params = await fake.migration.parameters()
    assert params["downtime-limit"] == 450 and params["max-bandwidth"] == 134217728
    announce = await fake.migration.announce_parameters()
    assert announce == {"announce-initial": 1, "announce-max": 550, "announce-rounds": 5,
                        "announce-step": 100}
    with pytest.raises(QMPCommandFailed) as err:
        await fake.migration.set_parameters({"announce-initial": 100001})
    assert err.value.code == "QMP_COMMAND_FAILED"
    await fake.migration.announce_self(initial_ms=1, max_ms=50, rounds=3, step_ms=10)
    with pytest.raises(QMPCommandFailed):
        await fake.migration.announce_self(rounds=-1)


async def test_an_answer_that_does_not_fit_its_model_is_refused(launch: Launch) -> None:
    fake = await launch("src")
    with pytest.raises(QMPAnswerInvalid) as err:  # a run state is no migration status
        await fake.qmp.query(QueryMigrate, "query-status")
    assert err.value.code == "QMP_ANSWER_INVALID" and "query-status" in err.value.message


# ---- a whole migration ----

async def test_incoming_listens_on_the_port_the_kernel_chose(launch: Launch) -> None:
    dst = await launch("dst", incoming=True)
    with pytest.raises(Unavailable) as err:  # not listening yet
        await dst.migration.listening_port()
    assert err.value.code == "MIGRATION_LISTEN_FAILED"
    assert await dst.machine.status() == "inmigrate"
    await dst.migration.incoming("tcp:127.0.0.1:0")
    port = await dst.migration.listening_port()
    assert port > 0
    listening = await dst.migration.query()
    assert listening.status is MigrationStatus.NONE
    assert listening.socket_address is not None
    assert listening.socket_address[0].host == "127.0.0.1"
    assert listening.socket_address[0].port == port


async def test_a_migration_completes_and_every_answer_is_typed(launch: Launch) -> None:
    src, dst = await running(launch), await launch("dst", incoming=True)
    assert (await src.migration.query()) == QueryMigrate()  # none before any migration
    await dst.migration.set_capabilities({})
    await dst.migration.incoming("tcp:127.0.0.1:0")
    uri = f"tcp:127.0.0.1:{await dst.migration.listening_port()}"
    await src.migration.set_capabilities({})
    await src.migration.set_parameters(FAST)
    await src.migration.migrate(uri)
    done = await until(src, MigrationStatus.COMPLETED)
    assert done.ram is not None and done.ram.total == 64 << 20
    assert done.ram.transferred == done.ram.total and done.ram.remaining == 0
    assert done.downtime is not None and done.downtime >= 1
    assert done.total_time is not None and done.total_time > 0
    assert await src.machine.status() == "postmigrate"
    assert (await until(dst, MigrationStatus.COMPLETED)).status.active is False
    assert await dst.machine.status() == "paused"  # -S: the agent runs it
    await dst.machine.cont()
    assert await dst.machine.status() == "running"
    seen = []
    while (event := await src.qmp.next_event(0.2)) is not None:
        seen.append(migration_event_status(event))
    assert [s for s in seen if s is not None] == [
        MigrationStatus.SETUP, MigrationStatus.ACTIVE, MigrationStatus.COMPLETED]
    assert None in seen  # the STOP at the switchover is no MIGRATION event


async def test_cancel_ends_the_migration_and_keeps_the_vm_running(launch: Launch) -> None:
    src, dst = await running(launch), await launch("dst", incoming=True)
    await dst.migration.incoming("tcp:127.0.0.1:0")
    await src.migration.set_parameters(SLOW)
    await src.migration.migrate(f"tcp:127.0.0.1:{await dst.migration.listening_port()}")
    active = await until(src, MigrationStatus.ACTIVE)
    assert active.status.active and not active.status.postcopy
    await src.migration.cancel()
    assert (await until(src, MigrationStatus.CANCELLED)).status.active is False
    assert await src.machine.status() == "running"
    await src.migration.cancel()  # nothing migrates: nothing happens


async def test_postcopy_needs_its_capability(launch: Launch) -> None:
    src, dst = await running(launch), await launch("dst", incoming=True)
    await dst.migration.incoming("tcp:127.0.0.1:0")
    await src.migration.set_parameters(SLOW)
    await src.migration.migrate(f"tcp:127.0.0.1:{await dst.migration.listening_port()}")
    await until(src, MigrationStatus.ACTIVE)
    with pytest.raises(QMPCommandFailed):
        await src.migration.start_postcopy()
    await src.migration.cancel()


async def test_a_paused_postcopy_is_recovered_out_of_band(launch: Launch) -> None:
    src, dst = await running(launch), await launch("dst", incoming=True)
    for fake in (src, dst):
        await fake.migration.set_capabilities({"postcopy-ram": True})
    await dst.migration.incoming("tcp:127.0.0.1:0")
    await src.migration.set_parameters({"max-bandwidth": 16 << 20})  # 4 s
    await src.migration.migrate(f"tcp:127.0.0.1:{await dst.migration.listening_port()}")
    await until(src, MigrationStatus.ACTIVE)
    with pytest.raises(QMPCommandFailed) as err:  # answered: exec-oob is accepted
        await src.migration.pause()
    assert "postcopy-active" in err.value.message
    await src.migration.start_postcopy()
    assert (await until(src, MigrationStatus.POSTCOPY_ACTIVE)).status.postcopy
    await until(dst, MigrationStatus.POSTCOPY_ACTIVE)
    await src.migration.pause()
    await until(src, MigrationStatus.POSTCOPY_PAUSED)
    await until(dst, MigrationStatus.POSTCOPY_PAUSED)
    await src.migration.cancel()  # a post-copy cannot be cancelled: nothing changes
    assert (await src.migration.query()).status is MigrationStatus.POSTCOPY_PAUSED
    with socket.socket() as probe:  # a free port, as the agent picks one
        probe.bind(("127.0.0.1", 0))
        uri = f"tcp:127.0.0.1:{probe.getsockname()[1]}"
    await dst.migration.recover(uri)
    assert (await dst.migration.query()).status is MigrationStatus.POSTCOPY_RECOVER
    await src.migration.set_parameters(FAST)  # mid-flight: the rest goes fast
    await src.migration.resume(uri)
    assert (await until(src, MigrationStatus.COMPLETED, timeout=20)).status.active is False
    await until(dst, MigrationStatus.COMPLETED)


# ---- dirty rate ----

async def test_dirty_rate_in_milliseconds(launch: Launch) -> None:
    src = await running(launch)
    sample = await src.migration.sample_dirty_rate(300)
    assert sample == DirtyRateSample(mib_per_s=4.0, calc_time_ms=300)


async def test_dirty_rate_before_qemu_8_2_in_whole_seconds(
        launch: Launch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_OLD_DIRTY_RATE", "1")
    src = await running(launch)
    assert await src.migration.sample_dirty_rate(300) == DirtyRateSample(4.0, 1000)


async def test_dirty_rate_without_a_measurement_in_time(
        launch: Launch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_DIRTY_RATE_STUCK", "1")
    src = await running(launch)
    with pytest.raises(Unavailable) as err:
        await src.migration.sample_dirty_rate(50, grace_s=0.3)
    assert err.value.code == "DIRTY_RATE_UNAVAILABLE"


# ---- events ----

@pytest.mark.parametrize(("event", "status"), [
    ({"event": "MIGRATION", "data": {"status": "completed"}}, MigrationStatus.COMPLETED),
    ({"event": "MIGRATION", "data": {"status": "postcopy-active"}},
     MigrationStatus.POSTCOPY_ACTIVE),
    ({"event": "MIGRATION", "data": {"status": "some-future-status"}}, None),
    ({"event": "MIGRATION", "data": {}}, None),
    ({"event": "MIGRATION_PASS", "data": {"pass": 2}}, None),
    ({"event": "RESUME"}, None),
])
def test_migration_event_status(event: dict[str, object], status: MigrationStatus | None
                                ) -> None:
    assert migration_event_status(QMPEvent.model_validate(event)) is status
