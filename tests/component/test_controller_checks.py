"""The controller's pre-migration checks, `where` matrix and CPU baseline, driven over HTTP
against fake agents (objects with the typed AgentClient methods the controller calls, answering
its wire models; ``define_vm`` answers as the older client the inventory routes use)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_scopes import local_transport
from pydantic import TypeAdapter

from segue.api.agent import (
    DirtyRateAnswer,
    FileRef,
    FileVisibility,
    MigrationView,
    ProbeAnswer,
    ProbeListener,
    ThroughputAnswer,
    VMCpu,
)
from segue.api.vm import VMInfo, VMSpecBody
from segue.controller.agents import AgentPool
from segue.controller.app import create_app
from segue.controller.config import ControllerConfig
from segue.controller.migration_models import MigrationRow
from segue.controller.models import utcnow
from segue.domain.errors import Conflict, NotFound, Unavailable
from segue.domain.host import HostFacts

DS_UUID = "0b7c5d4e-1f2a-4b3c-8d9e-0f1a2b3c4d5e"
FULL = ["aes", "avx", "lm", "sse2", "sse4.2"]
REPORTED = ("name", "uuid", "state", "pid", "spec")  # a VM's fields in a heartbeat


def host_facts(name: str, features: list[str] = FULL, port_groups: tuple[str, ...] = ("vm-net",),
               available_mib: int = 8192) -> dict[str, Any]:
    n = name[-1]
    return {
        "name": name,
        "cpu": {"host_model": "x", "accel": "tcg", "accel_reason": "", "logical_cpus": 4,
                "features": features},
        "memory": {"total_mib": 16384, "available_mib": available_mib},
        "qemu": {"binary": "qemu", "version": "7.2.0", "machines": ["pc-i440fx-7.2"],
                 "machine_aliases": {"pc": "pc-i440fx-7.2"}},
        "migration": {"interface": "mig0", "present": True, "up": True,
                      "addresses": [f"10.0.1.{n}/24"], "speed_mbps": 10000, "tls": True},
        "port_groups": [{"name": pg, "bridge": f"br-{pg}", "exists": True, "up": True}
                        for pg in port_groups],
        "datastores": [{"name": "shared", "path": "/srv/shared", "present": True,
                        "uuid": DS_UUID, "total_bytes": 1, "free_bytes": 1}],
        "vms": 0,
    }


def vm_spec(name: str = "web1", memory_mib: int = 256) -> dict[str, Any]:
    return {"name": name, "datastore": "shared", "uuid": "", "memory_mib": memory_mib,
            "vcpus": 1, "cpu_model": "qemu64,+aes", "machine": "pc",
            "nics": [{"port_group": "vm-net", "mac": "52:54:00:00:00:01",
                      "model": "virtio-net-pci"}],
            "disks": [], "kernel": "/k", "initrd": None, "cmdline": "", "serial_log": None}


@dataclass
class FakeAgent:
    """What the controller asks an agent, answered from plain fields; records the calls."""

    name: str
    facts_: dict[str, Any]
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)
    down: bool = False
    path_ok: bool = True
    invisible: set[str] = field(default_factory=set)  # "datastore:path" this host lacks
    calls: list[str] = field(default_factory=list)
    peers: dict[str, FakeAgent] = field(default_factory=dict)  # the pool's, by host

    def _answer(self, call: str) -> None:
        self.calls.append(call)
        if self.down:
            raise Unavailable("AGENT_UNREACHABLE", f"agent {self.name} did not answer", "")

    def _vm(self, name: str) -> VMInfo:
        if name not in self.vms:
            raise NotFound("VM_NOT_FOUND", f"no VM {name} on {self.name}", "")
        return vm_info(self.name, self.vms[name])

    async def facts(self) -> HostFacts:
        self._answer("facts")
        return TypeAdapter(HostFacts).validate_python(self.facts_)

    async def get_vm(self, name: str) -> VMInfo:
        self._answer("get_vm")
        return self._vm(name)

    async def vm_cpu(self, name: str) -> VMCpu:
        self._answer("vm_cpu")
        return VMCpu(model="qemu64,+aes", features=["aes", "lm", "sse2"])

    async def open_probe_listener(self, sink: bool = False) -> ProbeListener:
        self._answer("open_probe_listener" + (" sink" if sink else ""))
        return ProbeListener(address=f"10.0.1.{self.name[-1]}", port=40000)

    async def measure_throughput(self, address: str, port: int,
                                 seconds: float = 0.3) -> ThroughputAnswer:
        self._answer(f"throughput {address}:{port}")
        if not self.path_ok:
            return ThroughputAnswer(ok=False, bytes_per_s=None, bytes=0, seconds=0.0,
                                    error="connection timed out")
        return ThroughputAnswer(ok=True, bytes_per_s=117_000_000, bytes=35_100_000,
                                seconds=seconds, error=None)

    async def probe_migration_path(self, address: str, port: int) -> ProbeAnswer:
        self._answer(f"probe {address}:{port}")
        return ProbeAnswer(ok=self.path_ok, rtt_ms=0.2 if self.path_ok else None,
                           error=None if self.path_ok else "connection timed out",
                           source_address=f"10.0.1.{self.name[-1]}")

    async def files_visible(self, files: list[FileRef]) -> list[FileVisibility]:
        self._answer("files_visible")
        return [FileVisibility(datastore=f.datastore, path=f.path,
                               visible=f"{f.datastore}:{f.path}" not in self.invisible)
                for f in files]

    async def define_vm(self, spec: VMSpecBody, start: bool = False) -> VMInfo:
        self._answer("define_vm")
        info = {"name": spec.name, "uuid": "9b1d6a52-3f4e-4c7a-9d2b-5e6f7a8b9c0d",
                "state": "running" if start else "stopped", "pid": 4242,
                "spec": spec.model_dump(mode="json")}
        self.vms[spec.name] = info
        return VMInfo.model_validate({**info, "host": self.name, "role": "owner"})

    async def prepare_incoming(self, spec: dict[str, Any], migration_id: str,
                               capabilities: Any = None, parameters: Any = None,
                               tls_peer: str | None = None) -> Any:
        self._answer("prepare_incoming")
        raise Unavailable("FAKE_PREPARE_FAILED", "this fake starts no QEMU", "")

    async def adopt(self, name: str, datastore: str, from_host: str) -> VMInfo:
        """Re-homing: the stopped VM's record taken from ``from_host`` (kept there until its
        release, as an agent's copy is)."""
        self._answer(f"adopt {name} {from_host}")
        source = self.peers[from_host].vms.get(name)
        if source is None or source.get("state") != "stopped":
            raise Conflict("VM_LOCKED", f"{name} is not stopped on {from_host}", "stop it")
        self.vms[name] = dict(source)
        return self._vm(name)

    async def release_definition(self, name: str) -> None:
        self._answer(f"release_definition {name}")
        self._vm(name)
        self.vms.pop(name)

    async def abort_incoming(self, name: str) -> None:
        self._answer("abort_incoming")

    async def dirty_rate(self, name: str, calc_time_ms: int = 300) -> DirtyRateAnswer:
        self._answer("dirty_rate")
        return DirtyRateAnswer(dirty_rate_mibs=0.0, calc_time_ms=calc_time_ms)

    async def migration_status(self, name: str) -> MigrationView:
        self._answer("migration_status")
        return MigrationView(name=name, role="source", state="running")


def vm_info(host: str, info: dict[str, Any]) -> VMInfo:
    """A VM as an agent reports it (``info``: the fields a heartbeat carries)."""
    return VMInfo.model_validate({"host": host, "role": "owner", **info})


class FakePool(AgentPool):
    """An AgentPool that hands out the fakes by URL (as the older and the typed client)."""

    def __init__(self, agents: dict[str, FakeAgent]) -> None:
        super().__init__()
        self.fakes = {f"http://{a.name}:7600": a for a in agents.values()}
        for agent in agents.values():
            agent.peers = agents

    def typed(self, url: str, host: str = "") -> Any:
        return self.fakes[url]

    async def aclose(self) -> None:
        return None


@dataclass
class Controller:
    http: httpx.AsyncClient
    agents: dict[str, FakeAgent]
    app: Any

    async def beat(self, name: str, facts: dict[str, Any] | None = None,
                   with_vms: bool = True) -> httpx.Response:
        agent = self.agents[name]
        if facts is not None:
            agent.facts_ = facts
        return await self.http.post("/hosts/heartbeat", json={
            "name": name, "url": f"http://{name}:7600", "facts": agent.facts_,
            "vms": [{k: vm[k] for k in REPORTED} for vm in agent.vms.values()] if with_vms
            else []})


@asynccontextmanager
async def controller(tmp_path: Path, agents: list[FakeAgent]) -> AsyncIterator[Controller]:
    by_name = {a.name: a for a in agents}
    app = create_app(ControllerConfig(create_database=True, database_url=f"sqlite:///{tmp_path}/c.db",
                                      heartbeat_timeout=30.0), FakePool(by_name))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=local_transport(app), base_url="http://controller") as http:
        yield Controller(http, by_name, app)


def running(spec: dict[str, Any]) -> dict[str, Any]:
    return {"name": spec["name"], "uuid": "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d",
            "state": "running", "pid": 77, "spec": spec}


@pytest.fixture
def three_hosts() -> list[FakeAgent]:
    """host1 runs web1; host2 is older (no aes) and lacks vm-net; host3 is healthy."""
    return [FakeAgent("host1", host_facts("host1"), {"web1": running(vm_spec())}),
            FakeAgent("host2", host_facts("host2", ["lm", "sse2"], port_groups=())),
            FakeAgent("host3", host_facts("host3"))]


async def cluster_of(c: Controller) -> None:
    """Every host joins (baseline: their intersection), then they report their VMs."""
    for name in c.agents:
        assert (await c.beat(name, with_vms=False)).status_code == 200
    for name in c.agents:
        assert (await c.beat(name)).status_code == 200


def error_of(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert error["code"] == code, error
    return error


def codes(results: list[dict[str, Any]], severity: str = "error") -> set[str]:
    return {r["code"] for r in results if r["severity"] == severity}


# ---- POST /vms/{name}/migrations/check ----

async def test_check_lists_every_failure_at_once(tmp_path: Path,
                                                 three_hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, three_hosts) as c:
        await cluster_of(c)
        assert (await c.http.post("/hosts/host2/disable-migration")).status_code == 200
        resp = await c.http.post("/vms/web1/migrations/check", json={"to": "host2"})
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert (answer["vm"], answer["source"], answer["destination"], answer["ok"]) == (
            "web1", "host1", "host2", False)
        assert codes(answer["results"]) == {"HOST_MIGRATION_DISABLED", "CPU_FEATURE_MISSING",
                                            "PORTGROUP_MISSING"}
        cpu = next(r for r in answer["results"] if r["code"] == "CPU_FEATURE_MISSING")
        assert cpu["facts"]["missing"] == ["aes"] and cpu["hint"] and cpu["check"] == "cpu"
        assert codes(answer["results"], "ok") >= {"REQUEST_OK", "NETWORK_OK", "STORAGE_OK",
                                                  "RESOURCES_OK", "COMPATIBILITY_OK"}
        assert "probe 10.0.1.2:40000" in c.agents["host1"].calls  # the path was tested
        assert "prepare_incoming" not in c.agents["host2"].calls
        assert (await c.http.get("/migrations")).json() == []


async def test_check_passes_for_a_healthy_host_and_reports_path_failures(
        tmp_path: Path, three_hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, three_hosts) as c:
        await cluster_of(c)
        answer = (await c.http.post("/vms/web1/migrations/check", json={"to": "host3"})).json()
        assert answer["ok"] is True and codes(answer["results"]) == set()
        assert {r["severity"] for r in answer["results"]} == {"ok"}
        c.agents["host1"].path_ok = False
        answer = (await c.http.post("/vms/web1/migrations/check", json={"to": "host3"})).json()
        assert codes(answer["results"]) == {"MIGRATION_PATH_UNREACHABLE"}


async def test_check_uses_stored_facts_of_an_unreachable_destination(
        tmp_path: Path, three_hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, three_hosts) as c:
        await cluster_of(c)
        c.agents["host3"].down = True
        answer = (await c.http.post("/vms/web1/migrations/check", json={"to": "host3"})).json()
        assert codes(answer["results"]) == {"AGENT_UNREACHABLE", "MIGRATION_PATH_UNTESTED"}
        assert codes(answer["results"], "ok") >= {"CPU_OK", "PORT_GROUPS_OK"}


@asynccontextmanager
async def db1_migrating(tmp_path: Path, hosts: list[FakeAgent],
                        phase: str) -> AsyncIterator[Controller]:
    """A controller whose inventory has db1 (7700 MiB) on host1 with a migration to host3 in
    ``phase``."""
    hosts[0].vms["db1"] = running(vm_spec("db1", memory_mib=7700))
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        with c.app.state.db.session() as s:
            s.add(MigrationRow(id="m-db1", vm_name="db1", source_host="host1",
                               dest_host="host3", phase=phase, created_at=utcnow(),
                               updated_at=utcnow(), options={}, summary={}, last_progress={}))
        yield c


async def resources_check(c: Controller, vm: str, dest: str) -> dict[str, Any]:
    answer = (await c.http.post(f"/vms/{vm}/migrations/check", json={"to": dest})).json()
    return dict(next(r for r in answer["results"] if r["check"] == "resources"))


async def test_check_counts_memory_reserved_by_other_incoming_migrations(
        tmp_path: Path, three_hosts: list[FakeAgent]) -> None:
    async with db1_migrating(tmp_path, three_hosts, "monitor") as c:
        memory = await resources_check(c, "web1", "host3")
        assert memory["code"] == "INSUFFICIENT_MEMORY"
        assert memory["facts"]["reserved_mib"] == 7700 + 128
        answer = (await c.http.post("/vms/db1/migrations/check", json={"to": "host3"})).json()
        assert "MIGRATION_IN_PROGRESS" in codes(answer["results"])


async def test_a_queued_migration_reserves_no_memory_yet(
        tmp_path: Path, three_hosts: list[FakeAgent]) -> None:
    """Checked again when it leaves the queue, a queued job must not make the job ahead of
    it fail for memory it does not hold yet."""
    async with db1_migrating(tmp_path, three_hosts, "queued") as c:
        memory = await resources_check(c, "web1", "host3")
    assert memory["code"] == "RESOURCES_OK", memory
    assert memory["facts"].get("reserved_mib", 0) == 0, memory


async def test_check_of_unknown_names_is_404(tmp_path: Path,
                                             three_hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, three_hosts) as c:
        await cluster_of(c)
        error_of(await c.http.post("/vms/nope/migrations/check", json={"to": "host2"}),
                 404, "VM_NOT_FOUND")
        error_of(await c.http.post("/vms/web1/migrations/check", json={"to": "host9"}),
                 404, "HOST_NOT_FOUND")


# ---- GET /vms/{name}/where ----

async def test_where_shows_every_other_host_per_check(tmp_path: Path,
                                                      three_hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, three_hosts) as c:
        await cluster_of(c)
        answer = (await c.http.get("/vms/web1/where")).json()
        assert answer["vm"] == "web1" and answer["source"] == "host1"
        assert answer["checks"][:3] == ["request", "host_state", "cpu"]
        rows = {row["host"]: row for row in answer["hosts"]}
        assert set(rows) == {"host2", "host3"}
        assert rows["host3"]["ok"] is True
        assert set(rows["host3"]["checks"].values()) == {"ok"}
        assert rows["host2"]["ok"] is False
        assert rows["host2"]["checks"]["cpu"] == "error"
        assert rows["host2"]["checks"]["port_groups"] == "error"
        assert rows["host2"]["checks"]["storage"] == "ok"
        error_of(await c.http.get("/vms/nope/where"), 404, "VM_NOT_FOUND")


# ---- POST /vms/{name}/migrations ----

async def test_refused_migration_lists_results_and_creates_no_job(
        tmp_path: Path, three_hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, three_hosts) as c:
        await cluster_of(c)
        resp = await c.http.post("/vms/web1/migrations", json={"to": "host2"})
        error = error_of(resp, 409, "MIGRATION_CHECKS_FAILED")
        results = error["details"]["results"]
        assert codes(results) == {"CPU_FEATURE_MISSING", "PORTGROUP_MISSING"}
        assert codes(results, "ok") >= {"REQUEST_OK", "STORAGE_OK"}  # every result is there
        assert "CPU_FEATURE_MISSING" in error["message"] and "--check" in error["hint"]
        assert (await c.http.get("/migrations")).json() == []
        assert "prepare_incoming" not in c.agents["host2"].calls


async def test_request_sanity_keeps_its_own_codes(tmp_path: Path,
                                                  three_hosts: list[FakeAgent]) -> None:
    three_hosts[0].vms["idle1"] = {**running(vm_spec("idle1")), "state": "stopped"}
    async with controller(tmp_path, three_hosts) as c:
        await cluster_of(c)

        async def refused(vm: str, to: str, status: int, code: str) -> None:
            error_of(await c.http.post(f"/vms/{vm}/migrations", json={"to": to}), status, code)

        await refused("nosuchvm", "host3", 404, "VM_NOT_FOUND")
        await refused("web1", "host9", 404, "HOST_NOT_FOUND")
        await refused("web1", "host1", 409, "MIGRATION_SAME_HOST")
        await refused("idle1", "host3", 409, "VM_NOT_RUNNING")
        c.agents["host3"].down = True
        await refused("web1", "host3", 503, "AGENT_UNREACHABLE")
        assert (await c.http.get("/migrations")).json() == []


async def test_accepted_migration_notes_the_warnings(tmp_path: Path,
                                                     three_hosts: list[FakeAgent]) -> None:
    three_hosts[2].facts_["migration"]["speed_mbps"] = 1000
    async with controller(tmp_path, three_hosts) as c:
        await cluster_of(c)
        resp = await c.http.post("/vms/web1/migrations", json={"to": "host3"})
        assert resp.status_code == 202, resp.text
        job = resp.json()
        assert job["transitions"][0]["message"] == (
            "requested; pre-migration checks passed (warnings: MIGRATION_LINK_UNDER_10G)")
        deadline = time.monotonic() + 10
        while (await c.http.get(f"/migrations/{job['id']}")).json()["phase"] != "failed":
            assert time.monotonic() < deadline, "the fake's failed prepare never rolled back"
            await asyncio.sleep(0.05)
        assert "abort_incoming" in c.agents["host3"].calls


# ---- the CPU baseline ----

async def test_baseline_follows_hosts_until_vms_run(tmp_path: Path) -> None:
    agents = [FakeAgent("host1", host_facts("host1", ["aes", "avx", "lm"])),
              FakeAgent("host2", host_facts("host2", ["aes", "lm"]))]
    async with controller(tmp_path, agents) as c:
        view = (await c.http.get("/cluster/baseline")).json()
        assert view["features"] == [] and view["updated_at"] is None
        await c.beat("host1")
        assert (await c.http.get("/cluster/baseline")).json()["features"] == ["aes", "avx", "lm"]
        await c.beat("host2")
        view = (await c.http.get("/cluster/baseline")).json()
        assert view["features"] == ["aes", "lm"] and view["cpu_model"] == "qemu64,+aes,+lm"
        assert {h["name"]: h["missing"] for h in view["hosts"]} == {"host1": [], "host2": []}

        spec = {**vm_spec(), "cpu_model": "qemu64"}
        resp = await c.http.post("/vms", json={"host": "host1", "spec": spec})
        assert resp.status_code == 201, resp.text
        assert agents[0].vms["web1"]["spec"]["cpu_model"] == "qemu64,+aes,+lm"
        explicit = {**vm_spec("web2"), "cpu_model": "qemu64,+avx"}
        await c.http.post("/vms", json={"host": "host1", "spec": explicit})
        assert agents[0].vms["web2"]["spec"]["cpu_model"] == "qemu64,+avx"


async def test_new_host_below_the_baseline_is_refused_while_vms_run(tmp_path: Path) -> None:
    agents = [FakeAgent("host1", host_facts("host1", ["aes", "avx", "lm"])),
              FakeAgent("host2", host_facts("host2", ["lm"])),
              FakeAgent("host3", host_facts("host3", ["aes", "avx", "lm", "sse4.2"]))]
    async with controller(tmp_path, agents) as c:
        await c.beat("host1")
        resp = await c.http.post("/vms", json={"host": "host1", "spec": {
            **vm_spec(), "cpu_model": "baseline"}})
        assert resp.status_code == 201, resp.text
        error = error_of(await c.beat("host2"), 409, "HOST_BELOW_BASELINE")
        assert error["details"] == {"host": "host2", "missing": ["aes", "avx"]}
        assert "aes, avx" in error["message"]
        assert [h["name"] for h in (await c.http.get("/hosts")).json()] == ["host1"]
        assert (await c.beat("host3")).status_code == 200  # above the baseline: welcome
        view = (await c.http.get("/cluster/baseline")).json()
        assert view["features"] == ["aes", "avx", "lm"]  # VMs run: it stays put


async def test_raise_baseline_to_what_every_connected_host_offers(tmp_path: Path) -> None:
    agents = [FakeAgent("host1", host_facts("host1", ["aes", "avx", "lm"])),
              FakeAgent("host2", host_facts("host2", ["aes", "lm"]))]
    async with controller(tmp_path, agents) as c:
        await c.beat("host1")
        await c.beat("host2")
        await c.http.post("/vms", json={"host": "host1", "spec": {**vm_spec(),
                                                                  "cpu_model": "baseline"}})
        await c.beat("host2", host_facts("host2", ["aes", "avx", "lm", "sse2"]))  # upgraded
        view = (await c.http.get("/cluster/baseline")).json()
        assert view["features"] == ["aes", "lm"] and view["raisable"] == ["avx"]
        raised = (await c.http.post("/cluster/baseline/raise")).json()
        assert raised["added"] == ["avx"] and raised["removed"] == []
        assert raised["features"] == ["aes", "avx", "lm"]
        await c.beat("host2", host_facts("host2", ["aes", "lm"]))  # a known host goes lower
        error = error_of(await c.http.post("/cluster/baseline/raise"), 409,
                         "BASELINE_WOULD_LOWER")
        assert error["details"] == {"removed": ["avx"]}
        assert (await c.http.get("/cluster/baseline")).json()["features"] == ["aes", "avx", "lm"]


async def test_a_vm_file_the_destination_cannot_see_is_refused(
        tmp_path: Path, three_hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, three_hosts) as c:
        await cluster_of(c)
        c.agents["host3"].invisible = {"shared:web1/vm.json"}
        answer = (await c.http.post("/vms/web1/migrations/check", json={"to": "host3"})).json()
        assert codes(answer["results"]) == {"DISK_NOT_VISIBLE"}
        bad = next(r for r in answer["results"] if r["code"] == "DISK_NOT_VISIBLE")
        assert bad["facts"] == {"datastore": "shared", "path": "web1/vm.json"} and bad["hint"]
        assert "files_visible" in c.agents["host3"].calls


async def test_a_bandwidth_cap_under_tcg_on_qemu_7_is_refused(
        tmp_path: Path, three_hosts: list[FakeAgent]) -> None:
    """QEMU 7.2 under TCG loses dirtied pages while it rate-limits: no cap, no job."""
    async with controller(tmp_path, three_hosts) as c:
        await cluster_of(c)
        resp = await c.http.post("/vms/web1/migrations",
                                 json={"to": "host3", "max_bandwidth_mibs": 8,
                                       "allow_postcopy": False})
        error_of(resp, 400, "BANDWIDTH_CAP_UNSAFE")
        assert "prepare_incoming" not in c.agents["host3"].calls
        assert (await c.http.get("/migrations")).json() == []
