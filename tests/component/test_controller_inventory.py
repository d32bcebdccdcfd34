"""The controller's inventory API against real agent apps (fake QEMU) behind ASGITransport."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import sqlalchemy as sa
from asgi_scopes import local_transport
from fastapi import FastAPI

from segue.agent.app import create_app as create_agent_app
from segue.agent.config import AgentConfig
from segue.agent.facts import QemuCapabilities
from segue.agent.heartbeat import run_heartbeats, send_heartbeat
from segue.checks.context import host_facts_from_dict
from segue.clients.controller import ControllerClient
from segue.controller import inventory
from segue.controller.agents import AgentPool
from segue.controller.app import create_app
from segue.controller.config import ControllerConfig
from segue.controller.db import Database
from segue.controller.migration_models import MigrationRow
from segue.controller.models import Host, utcnow
from segue.domain.errors import Unavailable

if TYPE_CHECKING:  # fixtures come from conftest.py; only their types are imported
    from conftest import Lab


@dataclass
class Cluster:
    """A controller app and its agent apps, all in this event loop."""

    http: httpx.AsyncClient  # to the controller
    controller: FastAPI
    agents: dict[str, tuple[AgentConfig, FastAPI]]
    agent_http: dict[str, httpx.AsyncClient]
    client: ControllerClient  # the typed client, as the agents' heartbeats use it

    @property
    def db(self) -> Database:
        db: Database = self.controller.state.db
        return db

    async def beat(self, host: str) -> None:
        config, app = self.agents[host]
        await send_heartbeat(self.client, config, app.state.manager)

    def host_row(self, name: str) -> Host:
        with self.db.session() as s:
            return inventory.get_host(s, name)


ClusterFactory = Callable[..., AbstractAsyncContextManager[Cluster]]


@pytest.fixture
def cluster(lab: Lab, caps: QemuCapabilities) -> ClusterFactory:
    """``async with cluster() as c:`` runs host1 and host2 agents and a controller."""

    @asynccontextmanager
    async def run(heartbeat_timeout: float = 30.0) -> AsyncIterator[Cluster]:
        async with AsyncExitStack() as stack:
            agents, agent_http, by_url = {}, {}, {}
            for host in ("host1", "host2"):
                config = lab.config(host=host, state_dir=lab.root / host,
                                    advertise_url=f"http://{host}:7600")
                app = create_agent_app(config, caps)
                await stack.enter_async_context(app.router.lifespan_context(app))
                agents[host], by_url[config.advertise_url] = (config, app), app
                agent_http[host] = await stack.enter_async_context(httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://agent", timeout=60))
            pool = AgentPool(lambda url: httpx.ASGITransport(app=by_url[url]))
            controller = create_app(ControllerConfig(create_database=True, database_url=f"sqlite:///{lab.root}/controller.db",
                heartbeat_timeout=heartbeat_timeout), pool)
            await stack.enter_async_context(controller.router.lifespan_context(controller))
            http = await stack.enter_async_context(httpx.AsyncClient(
                transport=local_transport(controller), base_url="http://controller",
                timeout=60))
            client = await stack.enter_async_context(ControllerClient(
                "http://controller", transport=local_transport(controller)))
            yield Cluster(http, controller, agents, agent_http, client)

    return run


def error_of(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert error["code"] == code, error
    return error


async def create_vm(c: Cluster, lab: Lab, name: str = "web1", host: str = "host1",
                    start: bool = True) -> dict[str, Any]:
    resp = await c.http.post("/vms", json={"host": host, "spec": lab.spec(name), "start": start})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def event_kinds(c: Cluster, name: str) -> list[str]:
    resp = await c.http.get(f"/vms/{name}/events")
    assert resp.status_code == 200, resp.text
    return [e["kind"] for e in resp.json()]


# ---- hosts ----

async def test_heartbeat_makes_the_host_connected(cluster: ClusterFactory) -> None:
    async with cluster() as c:
        assert (await c.http.get("/hosts")).json() == []
        await c.beat("host1")
        hosts = (await c.http.get("/hosts")).json()
        assert [h["name"] for h in hosts] == ["host1"]
        host = hosts[0]
        assert host["state"] == "connected" and host["url"] == "http://host1:7600"
        assert host["migration_enabled"] is True and host["maintenance"] is False
        assert host["cpus"] >= 1 and host["memory_available_mib"] > 0 and host["vms"] == []
        assert host["migration_address"] is None  # the test agents have no migration NIC
        shown = (await c.http.get("/hosts/host1")).json()
        assert shown["facts"]["qemu"]["version"] == "7.2.0"
        error = error_of(await c.http.get("/hosts/nope"), 404, "HOST_NOT_FOUND")
        assert "host1" in error["hint"]


async def test_unknown_host_hint_when_no_host_is_known(cluster: ClusterFactory,
                                                       lab: Lab) -> None:
    async with cluster() as c:
        resp = await c.http.post("/vms", json={"host": "host9", "spec": lab.spec()})
        assert "controller_url" in error_of(resp, 404, "HOST_NOT_FOUND")["hint"]


async def test_silent_host_becomes_disconnected(cluster: ClusterFactory, lab: Lab) -> None:
    async with cluster(heartbeat_timeout=0.3) as c:
        await c.beat("host1")
        assert c.host_row("host1").state == "connected"
        deadline = time.monotonic() + 5
        while c.host_row("host1").state != "disconnected":  # the controller's watcher
            assert time.monotonic() < deadline, "the stale host was never marked"
            await asyncio.sleep(0.1)
        assert (await c.http.get("/hosts/host1")).json()["state"] == "disconnected"
        resp = await c.http.post("/vms", json={"host": "host1", "spec": lab.spec()})
        error = error_of(resp, 503, "HOST_DISCONNECTED")
        assert "agent of host1" in error["hint"]
        assert (await c.agent_http["host1"].get("/vms")).json() == []  # nothing reached it
        await c.beat("host1")
        assert (await c.http.get("/hosts/host1")).json()["state"] == "connected"


async def test_migration_switch(cluster: ClusterFactory) -> None:
    async with cluster() as c:
        await c.beat("host2")
        resp = await c.http.post("/hosts/host2/disable-migration")
        assert resp.status_code == 200 and resp.json()["migration_enabled"] is False
        assert c.host_row("host2").migration_enabled is False
        await c.beat("host2")  # a heartbeat does not undo it
        assert c.host_row("host2").migration_enabled is False
        resp = await c.http.post("/hosts/host2/enable-migration")
        assert resp.json()["migration_enabled"] is True
        error_of(await c.http.post("/hosts/nope/enable-migration"), 404, "HOST_NOT_FOUND")


# ---- VMs ----

async def test_vm_life_through_the_controller(cluster: ClusterFactory, lab: Lab) -> None:
    async with cluster() as c:
        await c.beat("host1")
        created = await create_vm(c, lab)
        assert created["host"] == "host1" and created["state"] == "running"
        assert created["live"]["pid"] == created["pid"] and len(created["uuid"]) == 36
        on_agent = (await c.agent_http["host1"].get("/vms/web1")).json()
        assert on_agent["state"] == "running" and on_agent["uuid"] == created["uuid"]
        assert [v["name"] for v in (await c.http.get("/vms")).json()] == ["web1"]
        assert (await c.http.get("/hosts/host1")).json()["vms"] == ["web1"]

        shown = (await c.http.get("/vms/web1")).json()
        assert shown["live"]["state"] == "running" and shown["live_error"] is None

        stopped = (await c.http.post("/vms/web1/stop", params={"force": True})).json()
        assert stopped["state"] == "stopped" and stopped["pid"] is None
        started = (await c.http.post("/vms/web1/start")).json()
        assert started["state"] == "running" and started["pid"]
        await c.beat("host1")  # agrees with the inventory: no state event
        resp = await c.http.post("/vms/web1/stop", params={"timeout": 10})
        assert resp.json()["state"] == "stopped", resp.text

        assert (await c.http.delete("/vms/web1")).status_code == 204
        assert (await c.agent_http["host1"].get("/vms")).json() == []
        error_of(await c.http.get("/vms/web1"), 404, "VM_NOT_FOUND")
        assert await event_kinds(c, "web1") == [
            "defined", "started", "stopped", "state", "started", "state", "stopped", "state",
            "destroyed"]


async def test_a_stop_names_the_generation_on_record(cluster: ClusterFactory, lab: Lab) -> None:
    """The controller's stop carries the VM's lease generation on record: a stale record is
    refused by the agent (VM_NOT_OWNED) and the VM keeps running; a heartbeat refreshes it."""
    async with cluster() as c:
        await c.beat("host1")
        created = await create_vm(c, lab)
        with c.db.session() as s:
            assert inventory.get_vm(s, "web1").generation == 1
            inventory.get_vm(s, "web1").generation = 7  # as if read before a claim elsewhere
        resp = await c.http.post("/vms/web1/stop", params={"force": True})
        error = error_of(resp, 409, "VM_NOT_OWNED")
        assert "generation 7" in error["message"] and "generation 1" in error["message"]
        on_agent = (await c.agent_http["host1"].get("/vms/web1")).json()
        assert on_agent["state"] == "running" and on_agent["pid"] == created["pid"]
        await c.beat("host1")  # the host reports generation 1
        stopped = await c.http.post("/vms/web1/stop", params={"force": True})
        assert stopped.json()["state"] == "stopped", stopped.text


async def test_create_errors_change_nothing(cluster: ClusterFactory, lab: Lab) -> None:
    async with cluster() as c:
        await c.beat("host1")
        await c.beat("host2")
        await create_vm(c, lab, start=False)
        resp = await c.http.post("/vms", json={"host": "host2", "spec": lab.spec("web1")})
        assert "already exists" in error_of(resp, 409, "VM_EXISTS")["message"]
        assert (await c.agent_http["host2"].get("/vms")).json() == []
        resp = await c.http.post("/vms", json={"host": "host9", "spec": lab.spec("web2")})
        error_of(resp, 404, "HOST_NOT_FOUND")
        resp = await c.http.post("/vms", json={
            "host": "host2", "spec": lab.spec("web2", memory_mib=1024 * 1024)})
        error_of(resp, 409, "MEMORY_EXCEEDS_HOST")  # the agent's own error, passed through
        assert [v["name"] for v in (await c.http.get("/vms")).json()] == ["web1"]
        error_of(await c.http.get("/vms/web2/events"), 404, "VM_NOT_FOUND")


async def test_heartbeats_reconcile_vm_states(cluster: ClusterFactory, lab: Lab) -> None:
    async with cluster() as c:
        agent = c.agent_http["host2"]
        resp = await agent.post("/vms", json=lab.spec("db1"), params={"start": True})
        assert resp.status_code == 201, resp.text
        await c.beat("host2")
        vm = (await c.http.get("/vms/db1")).json()
        assert vm["host"] == "host2" and vm["state"] == "running"
        await agent.post("/vms/db1/stop", params={"force": True})
        await c.beat("host2")
        assert (await c.http.get("/vms")).json()[0]["state"] == "stopped"
        await agent.delete("/vms/db1")
        await c.beat("host2")
        assert (await c.http.get("/vms")).json()[0]["state"] == "missing"
        resp = await c.http.get("/vms/db1/events")
        changes = [(e["kind"], e["detail"].get("to")) for e in resp.json()]
        assert changes == [("discovered", None), ("state", "stopped"), ("state", "missing")]
        # the agent no longer has it: destroying it just forgets it
        assert (await c.http.delete("/vms/db1")).status_code == 204
        assert (await c.http.get("/vms")).json() == []


async def test_show_vm_when_its_host_is_silent(cluster: ClusterFactory, lab: Lab) -> None:
    async with cluster(heartbeat_timeout=0.3) as c:
        await c.beat("host1")
        await create_vm(c, lab, start=False)
        await asyncio.sleep(0.5)
        shown = (await c.http.get("/vms/web1")).json()
        assert shown["state"] == "stopped" and shown["live"] is None
        assert shown["live_error"]["code"] == "HOST_DISCONNECTED"
        error_of(await c.http.post("/vms/web1/start"), 503, "HOST_DISCONNECTED")


# ---- the agent's heartbeat loop ----

async def test_heartbeat_loop_reaches_the_controller(cluster: ClusterFactory) -> None:
    async with cluster() as c:
        config, app = c.agents["host2"]
        config = AgentConfig(**{**config.__dict__, "controller_url": "http://controller",
                                "heartbeat_interval": 0.05})
        transport = local_transport(c.controller)
        async with asyncio.TaskGroup() as tg:
            beats = tg.create_task(run_heartbeats(config, app.state.manager, transport))
            deadline = time.monotonic() + 5
            while not (await c.http.get("/hosts")).json():
                assert time.monotonic() < deadline, "no heartbeat arrived"
                await asyncio.sleep(0.05)
            beats.cancel()
        assert c.host_row("host2").state == "connected"


async def test_agent_survives_an_unreachable_controller(
        lab: Lab, caps: QemuCapabilities, caplog: pytest.LogCaptureFixture) -> None:
    config = lab.config(controller_url=f"unix:{lab.root}/nobody.sock",
                        advertise_url="http://host1:7600", heartbeat_interval=0.05)
    app = create_agent_app(config, caps)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent")
    with caplog.at_level(logging.WARNING, logger="segue.agent.heartbeat"):
        async with app.router.lifespan_context(app), http:
            await asyncio.sleep(0.5)
            assert (await http.get("/health")).status_code == 200
    failures = [r for r in caplog.records if "heartbeat to the controller failed" in r.message]
    assert len(failures) == 1  # rate-limited: ~10 failures, one line


# ---- the database ----

def test_upgrade_creates_the_schema_and_is_idempotent(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/fresh.db")
    db.upgrade(create=True)
    db.upgrade()
    tables = set(sa.inspect(db.engine).get_table_names())
    assert {"hosts", "vms", "vm_events", "alembic_version"} <= tables
    with db.engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert len(versions) == 1
    db.dispose()


def test_relative_sqlite_url_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = Database("sqlite:///controller.db")
    db.upgrade(create=True)
    now = utcnow()
    with db.session() as s:
        inventory.record_heartbeat(s, "host1", "http://host1:7600",
                                   host_facts_from_dict("host1", {}), [], now)
    with db.session() as s:
        host = inventory.get_host(s, "host1")
        assert host.last_heartbeat == now and host.last_heartbeat.tzinfo is not None
    db.dispose()
    assert (tmp_path / "controller.db").exists()


def test_an_empty_or_corrupt_database_stops_the_controller(tmp_path: Path) -> None:
    """A new (or deleted) database is created only on request; a corrupt one never is."""
    db = Database(f"sqlite:///{tmp_path}/gone.db")
    with pytest.raises(Unavailable) as err:
        db.upgrade()
    assert err.value.code == "DATABASE_EMPTY" and "--create-database" in err.value.hint
    assert sa.inspect(db.engine).get_table_names() == []  # nothing made
    db.dispose()
    (tmp_path / "bad.db").write_bytes(b"this is not a database file at all" * 200)
    bad = Database(f"sqlite:///{tmp_path}/bad.db")
    with pytest.raises(Unavailable) as err:
        bad.upgrade(create=True)
    assert err.value.code == "DATABASE_UNAVAILABLE" and "backup" in err.value.hint
    bad.dispose()


def test_one_active_job_per_vm_is_kept_by_the_database(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/c.db")
    db.upgrade(create=True)
    now = utcnow()

    def job(job_id: str, phase: str) -> MigrationRow:
        return MigrationRow(id=job_id, vm_name="web1", source_host="host1", dest_host="host2",
                            phase=phase, created_at=now, updated_at=now, options={},
                            summary={}, last_progress={})

    with db.session() as s:
        s.add_all([job("a", "completed"), job("b", "failed"), job("c", "monitor")])
    with pytest.raises(sa.exc.IntegrityError), db.session() as s:
        s.add(job("d", "queued"))
    with db.session() as s:
        s.add(job("e", "cancelled"))  # a finished one is fine
    db.dispose()


# ---- the CLI, end to end ----

class LoopBridge(httpx.AsyncBaseTransport):
    """A transport for the CLI's client (whose event loop runs in a worker thread) that
    serves each request with an ASGI app in the test's event loop."""

    def __init__(self, app: FastAPI, loop: asyncio.AbstractEventLoop) -> None:
        self._asgi = local_transport(app)
        self._loop = loop

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()

        async def call() -> tuple[int, httpx.Headers, bytes]:
            resp = await self._asgi.handle_async_request(httpx.Request(
                request.method, request.url, headers=request.headers, content=body))
            return resp.status_code, resp.headers, await resp.aread()

        served = asyncio.run_coroutine_threadsafe(call(), self._loop)
        status, headers, content = await asyncio.wrap_future(served)
        return httpx.Response(status, headers=headers, content=content)


async def test_cli_drives_the_controller(cluster: ClusterFactory, lab: Lab,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from segue.cli.main import app as cli

    async with cluster() as c:
        await c.beat("host1")
        bridge = LoopBridge(c.controller, asyncio.get_running_loop())
        monkeypatch.setattr(ControllerClient, "from_env", classmethod(
            lambda cls, url=None, token=None: cls("http://controller", transport=bridge)))

        async def segue(*args: str, code: int = 0) -> str:
            result = await asyncio.to_thread(CliRunner().invoke, cli, list(args))
            assert result.exit_code == code, result.output
            return result.output

        assert '"name": "host1"' in await segue("host", "list", "--json")
        assert "connected" in await segue("host", "list")
        assert "7.2.0" in await segue("host", "show", "host1")
        assert "disabled" in await segue("host", "disable-migration", "host1")
        out = await segue("vm", "create", "web1", "--host", "host1", "--memory", "64",
                          "--kernel", str(lab.kernel), "--initrd", str(lab.initrd),
                          "--append", "console=ttyS0")
        assert "VM web1" in out and "running" in out
        assert "web1" in await segue("vm", "list")
        assert "running" in await segue("vm", "show", "web1")
        assert "stopped" in await segue("vm", "stop", "web1", "--force")
        assert "running" in await segue("vm", "start", "web1")
        assert "destroyed" in await segue("vm", "destroy", "web1")
        assert "destroyed" in await segue("vm", "events", "web1")
        out = await segue("vm", "show", "web1", code=1)
        assert "VM_NOT_FOUND" in out and "hint" in out


async def test_cli_prints_the_controllers_code(cluster: ClusterFactory, lab: Lab,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A request the controller refuses shows its code, message and hint; never the code of
    another service (``AGENT_ERROR``)."""
    from typer.testing import CliRunner

    from segue.cli.main import app as cli

    async with cluster() as c:
        await c.beat("host1")
        await create_vm(c, lab, start=False)
        bridge = LoopBridge(c.controller, asyncio.get_running_loop())
        monkeypatch.setattr(ControllerClient, "from_env", classmethod(
            lambda cls, url=None, token=None: cls("http://controller", transport=bridge)))

        async def segue(*args: str) -> str:
            result = await asyncio.to_thread(CliRunner().invoke, cli, list(args))
            assert result.exit_code == 1, result.output
            assert "AGENT_ERROR" not in result.output
            return result.output

        out = await segue("vm", "stop", "web1", "--timeout=-5")
        assert "error: REQUEST_INVALID: timeout" in out and "hint" in out
        out = await segue("host", "show", "höst")
        assert "error: REQUEST_INVALID: name" in out
        out = await segue("vm", "create", "web1", "--host", "host1", "--kernel",
                          str(lab.kernel))
        assert "error: VM_EXISTS" in out and "hint: choose another name" in out
        stopped = (await c.http.get("/vms/web1")).json()
        assert stopped["state"] == "stopped"  # nothing changed
