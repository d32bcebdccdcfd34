"""The agent side of the pre-migration checks against a fake QEMU: an agent offering a smaller
CPU feature set, the CPU a running VM exposes, and the migration network path probe."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import httpx
import pytest

from segue.agent.app import create_app
from segue.agent.config import AgentConfig
from segue.agent.facts import QemuCapabilities
from segue.agent.migpath import ProbeListeners, measure_throughput, probe_path
from segue.api.agent import FileRef, ProbeAnswer
from segue.api.vm import VMSpecBody
from segue.clients.agent import AgentClient
from segue.domain.errors import Conflict, InsufficientResources, Unavailable
from segue.qemu import process

if TYPE_CHECKING:  # fixtures come from conftest.py; only their types are imported
    from conftest import Lab

OLDER = ["avx2", "aes"]


@asynccontextmanager
async def agent_client(config: AgentConfig, caps: QemuCapabilities
                       ) -> AsyncIterator[AgentClient]:
    """The agent app (its lifespan) behind the async client the controller uses."""
    app = create_app(config, caps)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), \
            AgentClient("http://agent", transport=transport) as client:
        yield client


def body(spec: dict[str, object]) -> VMSpecBody:
    return VMSpecBody.model_validate(spec)


# ---- an older host: a smaller CPU feature set, really enforced ----

async def test_facts_omit_the_excluded_features(lab: Lab, caps: QemuCapabilities) -> None:
    caps = replace(caps, features=["aes", "avx2", "fpu", "lahf-lm", "lahf_lm", "sse2"])
    async with agent_client(lab.config(cpu_exclude_features=["aes", "lahf_lm"]), caps) as c:
        assert (await c.facts()).cpu.features == ["avx2", "fpu", "sse2"]
    async with agent_client(lab.config(), caps) as c:
        assert "aes" in (await c.facts()).cpu.features


async def test_vm_runs_without_the_excluded_features(lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_client(lab.config(cpu_exclude_features=OLDER), caps) as client:
        info = await client.define_vm(body(lab.spec("web1", cpu_model="max")), start=True)
        assert info.pid is not None
        assert process.cmdline_option(info.pid, "-cpu") == "max,-aes,-avx2,enforce"
        cpu = await client.vm_cpu("web1")
    assert cpu.model == "max,-aes,-avx2,enforce"
    assert "fpu" in cpu.features and not {"aes", "avx2", "enforce"} & set(cpu.features)


async def test_vm_cpu_of_an_unrestricted_host(lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_client(lab.config(), caps) as client:
        await client.define_vm(body(lab.spec("web1", cpu_model="max")), start=True)
        cpu = await client.vm_cpu("web1")
    assert cpu.model == "max,enforce"
    assert {"aes", "avx2", "fpu"} <= set(cpu.features)


async def test_vm_cpu_needs_a_running_qemu(lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_client(lab.config(), caps) as client:
        await client.define_vm(body(lab.spec("web1")))
        with pytest.raises(Conflict) as err:
            await client.vm_cpu("web1")
    assert err.value.code == "VM_NOT_RUNNING"


async def test_define_refuses_a_model_asking_for_an_excluded_feature(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_client(lab.config(cpu_exclude_features=OLDER), caps) as client:
        with pytest.raises(InsufficientResources) as err:
            await client.define_vm(
                body(lab.spec("web1", cpu_model="qemu64,+aes,avx2=on,+sse4.2")), start=True)
        assert err.value.code == "CPU_FEATURE_MISSING"
        assert err.value.details["missing"] == ["aes", "avx2"]
        assert await client.list_vms() == []
        # taking an excluded feature away is fine: it is what the host does anyway
        await client.define_vm(body(lab.spec("web2", cpu_model="qemu64,-aes")), start=True)
    assert len(lab.qemu_pids()) == 1


async def test_start_refuses_on_a_host_that_became_older(lab: Lab,
                                                         caps: QemuCapabilities) -> None:
    async with agent_client(lab.config(), caps) as client:
        await client.define_vm(body(lab.spec("web1", cpu_model="qemu64,+aes")))
    async with agent_client(lab.config(cpu_exclude_features=OLDER), caps) as client:
        with pytest.raises(InsufficientResources) as err:
            await client.start_vm("web1")
        assert err.value.code == "CPU_FEATURE_MISSING"
        assert (await client.get_vm("web1")).state == "stopped"
    assert lab.qemu_pids() == []


async def test_incoming_migration_refused_leaves_nothing(lab: Lab,
                                                         caps: QemuCapabilities) -> None:
    config = lab.config(cpu_exclude_features=OLDER, migration_interface="lo")
    spec = lab.spec("web1", cpu_model="qemu64,+avx2",
                    uuid="6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b")
    async with agent_client(config, caps) as client:
        with pytest.raises(InsufficientResources) as err:
            await client.prepare_incoming(body(spec), "m-1", {}, {})
        assert err.value.code == "CPU_FEATURE_MISSING"
        assert await client.list_vms() == []
    assert lab.qemu_pids() == []


# ---- the migration network path ----

async def test_listen_then_probe_over_the_migration_interface(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_client(lab.config(migration_interface="lo"), caps) as client:
        listener = await client.open_probe_listener()
        assert listener.address == "127.0.0.1" and listener.port > 0
        first = await client.probe_migration_path(listener.address, listener.port)
        assert first.ok is True and first.error is None
        assert first.rtt_ms is not None and first.rtt_ms >= 0
        assert first.source_address == "127.0.0.1"
        await asyncio.sleep(0.1)  # the listener closes after its one connection
        again = await client.probe_migration_path(listener.address, listener.port)
    assert again.ok is False and again.error is not None and "refused" in again.error


async def test_throughput_over_the_migration_interface(lab: Lab,
                                                      caps: QemuCapabilities) -> None:
    async with agent_client(lab.config(migration_interface="lo"), caps) as client:
        sink = await client.open_probe_listener(sink=True)
        answer = await client.measure_throughput(sink.address, sink.port, seconds=0.2)
        assert answer.ok is True and answer.error is None, answer
        assert answer.bytes_per_s is not None
        assert answer.bytes_per_s > 10e6  # loopback: far above any real NIC here
        assert answer.bytes >= answer.bytes_per_s * answer.seconds
        await asyncio.sleep(0.1)  # one stream per sink
        again = await client.measure_throughput(sink.address, sink.port, seconds=0.1)
    assert again.ok is False and again.bytes_per_s is None and again.error


async def test_throughput_is_what_the_receiver_took_not_what_was_buffered() -> None:
    """A receiver that takes 64 KiB every 10 ms (at most 6.5 MB/s): the sender's socket
    buffers fill at once, yet the rate reported is the receiver's."""
    pace = 65536 / 0.01

    async def paced(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(65536)
        started, timed = time.perf_counter(), 0
        while chunk := await reader.read(65536):
            timed += len(chunk)
            await asyncio.sleep(0.01)
        writer.write(json.dumps({"bytes": len(first) + timed, "timed_bytes": timed,
                                 "seconds": time.perf_counter() - started}).encode() + b"\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(paced, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        answer = await measure_throughput("127.0.0.1", "127.0.0.1", port, seconds=0.5)
    assert answer.ok is True, answer
    assert answer.bytes_per_s is not None
    assert 0.2 * pace < answer.bytes_per_s <= 1.1 * pace, (answer, pace)


async def test_probe_to_a_closed_port_is_not_ok(lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_client(lab.config(migration_interface="lo"), caps) as client:
        listener = await client.open_probe_listener()
        closed = listener.port + 1 if listener.port < 65535 else 1
        answer = await client.probe_migration_path("127.0.0.1", closed)
    assert answer == ProbeAnswer(ok=False, rtt_ms=None, error=answer.error,
                                 source_address="127.0.0.1")
    assert answer.error is not None and "refused" in answer.error


async def test_probe_times_out_without_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never_connects(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(3600)  # a peer that drops our SYNs

    monkeypatch.setattr(asyncio, "open_connection", never_connects)
    started = time.monotonic()
    answer = await probe_path("127.0.0.1", "127.0.0.1", 9, timeout=0.3)
    assert answer == ProbeAnswer(ok=False, rtt_ms=None, error="timed out after 0.3 s",
                                 source_address="127.0.0.1")
    assert time.monotonic() - started < 2


async def test_without_a_migration_address_both_are_503(lab: Lab,
                                                        caps: QemuCapabilities) -> None:
    async with agent_client(lab.config(migration_interface="nonexistent0"), caps) as client:
        for call in (client.open_probe_listener(), client.open_probe_listener(sink=True),
                     client.probe_migration_path("127.0.0.1", 9),
                     client.measure_throughput("127.0.0.1", 9)):
            with pytest.raises(Unavailable) as err:
                await call
            assert err.value.code == "MIGRATION_NIC_UNAVAILABLE"


async def test_bad_probe_requests(lab: Lab, caps: QemuCapabilities) -> None:
    app = create_app(lab.config(migration_interface="lo"), caps)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://agent") as http:
        resp = await http.post("/migration-network/probe", json={"address": "host2", "port": 1})
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "PROBE_ADDRESS_INVALID"
        resp = await http.post("/migration-network/probe",
                               json={"address": "127.0.0.1", "port": 0})
        assert resp.status_code == 400 and resp.json()["error"]["field"] == "port"


async def test_listener_closes_after_its_timeout() -> None:
    async with asyncio.TaskGroup() as tg:
        listeners = ProbeListeners(tg, timeout=0.2)
        port = (await listeners.open("127.0.0.1")).port
        await asyncio.sleep(0.5)
        answer = await probe_path("127.0.0.1", "127.0.0.1", port)
    assert answer.ok is False and answer.error is not None and "refused" in answer.error


async def test_agent_stop_cancels_open_listeners(lab: Lab, caps: QemuCapabilities) -> None:
    started = time.monotonic()
    async with agent_client(lab.config(migration_interface="lo"), caps) as client:
        port = (await client.open_probe_listener()).port
    assert time.monotonic() - started < 5  # not the listener's 10 s
    answer = await probe_path("127.0.0.1", "127.0.0.1", port)
    assert answer.ok is False


async def test_files_visible_answers_per_file(lab: Lab, caps: QemuCapabilities) -> None:
    (lab.datastore / "web1").mkdir()
    (lab.datastore / "web1" / "disk0.qcow2").write_bytes(b"x")
    (lab.datastore / "web1" / "vm.json").write_text("{}")
    async with agent_client(lab.config(), caps) as client:
        answer = await client.files_visible([
            FileRef(datastore="shared", path="web1/disk0.qcow2"),
            FileRef(datastore="shared", path="web1/missing.qcow2"),
            FileRef(datastore="nfs9", path="web1/disk0.qcow2"),
            FileRef(datastore="shared", path="../shared/web1/disk0.qcow2"),
            FileRef(datastore="shared", path="web1/vm.json"),  # what the storage check asks
        ])
    assert [f.visible for f in answer] == [True, False, False, False, True]
