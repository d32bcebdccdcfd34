"""Bad input to both services, table-driven: every case answers 400 in the one error shape
(a ``code``, the ``field`` at fault, a hint) and changes nothing; none answers 422 or 500.

Cases: an unknown field, a wrong type, ``"512"`` for a number, NaN, infinity, a negative
number, an overlong string, a path outside its root (``..``), unicode in a name, malformed
JSON and a body that is not JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from test_controller_inventory import Cluster, ClusterFactory, cluster

from segue.agent.heartbeat import heartbeat_body

if TYPE_CHECKING:
    from conftest import AgentFactory, Lab

__all__ = ["cluster"]  # the fixture, shared


@dataclass(frozen=True)
class Bad:
    """One bad request: ``json`` (a value, changed from a good body by ``change``) or raw
    ``content``; the ``field`` the answer must name (None: no single field, e.g. bad JSON)."""

    method: str
    path: str
    change: Callable[[dict[str, Any]], Any] | None = None
    content: bytes | None = None
    content_type: str = "application/json"
    params: dict[str, str] = field(default_factory=dict)
    field: str | None = None
    code: str | None = None


def with_(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``body`` with the dotted ``path`` set to ``value``."""
    out = json.loads(json.dumps(body))
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return out


async def send(http: httpx.AsyncClient, case: Bad, good: dict[str, Any]) -> httpx.Response:
    if case.content is not None:
        return await http.request(case.method, case.path, content=case.content,
                                  headers={"content-type": case.content_type},
                                  params=case.params)
    body = case.change(good) if case.change else None
    return await http.request(case.method, case.path, json=body, params=case.params)


def assert_refused(resp: httpx.Response, case: Bad) -> None:
    assert resp.status_code == 400, (resp.status_code, resp.text)
    answer = resp.json()
    error = answer["error"]
    assert answer["kind"] == "invalid" and set(error) >= {"code", "message", "hint", "field"}
    assert error["code"] and error["code"].isupper() and error["hint"], error
    if case.code is not None:
        assert error["code"] == case.code, error
    if case.field is not None:
        assert error["field"] == case.field, error


# ---- the controller ----
CONTROLLER_CASES: dict[str, Bad] = {
    "unknown field": Bad("POST", "/vms", lambda b: with_(b, "spec.colour", "red"),
                         field="spec.colour", code="REQUEST_FIELD_UNKNOWN"),
    "unknown top field": Bad("POST", "/vms", lambda b: with_(b, "force", True), field="force"),
    "wrong type": Bad("POST", "/vms", lambda b: with_(b, "start", "yes"), field="start"),
    "512 for a number": Bad("POST", "/vms", lambda b: with_(b, "spec.memory_mib", "512"),
                            field="spec.memory_mib", code="REQUEST_INVALID"),
    "NaN in a body": Bad("POST", "/vms", content=b'{"host": "host1", "spec": {"name": "w9", '
                         b'"datastore": "shared", "memory_mib": NaN, "kernel": "/k"}}',
                         field="spec.memory_mib"),
    "NaN in a query": Bad("POST", "/vms/web1/stop", params={"timeout": "nan"}, field="timeout"),
    "infinity in a body": Bad("POST", "/vms", content=b'{"host": "host1", "spec": {"name": '
                              b'"w9", "datastore": "shared", "vcpus": Infinity}}',
                              field="spec.vcpus"),
    "infinity in a query": Bad("POST", "/vms/web1/stop", params={"timeout": "inf"},
                               field="timeout"),
    "negative number": Bad("POST", "/vms", lambda b: with_(b, "spec.vcpus", -1),
                           field="spec.vcpus"),
    "negative query": Bad("POST", "/vms/web1/stop", params={"timeout": "-5"}, field="timeout"),
    "overlong string": Bad("POST", "/vms", lambda b: with_(b, "spec.cmdline", "x" * 5000),
                           field="spec.cmdline"),
    "overlong name": Bad("POST", "/vms", lambda b: with_(b, "host", "h" * 65), field="host"),
    "path outside its root": Bad("POST", "/vms", lambda b: with_(
        b, "spec.disks", [{"datastore": "shared", "path": "../../etc/shadow"}]),
        field="spec.disks.0.path", code="PATH_OUTSIDE_DATASTORE"),
    "unicode in a name": Bad("POST", "/vms", lambda b: with_(b, "spec.name", "wéb9"),
                             field="spec.name"),
    "unicode in a path name": Bad("POST", "/vms/wéb1/start", field="name"),
    "unicode in a host name": Bad("POST", "/hosts/hôst1/disable-migration", field="name"),
    "malformed JSON": Bad("POST", "/vms", content=b'{"host": "host1", "spec": ',
                          code="REQUEST_JSON_INVALID"),
    "not JSON": Bad("POST", "/vms", content=b"host=host1", content_type="text/plain",
                    code="REQUEST_CONTENT_TYPE_INVALID"),
    "no body": Bad("POST", "/vms", code="REQUEST_FIELD_MISSING"),
}
HEARTBEAT_CASES: dict[str, Bad] = {
    "heartbeat: unknown field": Bad("POST", "/hosts/heartbeat",
                                    lambda b: with_(b, "facts.cpu.gpu", 1),
                                    field="facts.cpu.gpu", code="REQUEST_FIELD_UNKNOWN"),
    "heartbeat: 4 as a string": Bad("POST", "/hosts/heartbeat",
                                    lambda b: with_(b, "facts.cpu.logical_cpus", "4"),
                                    field="facts.cpu.logical_cpus"),
    "heartbeat: negative": Bad("POST", "/hosts/heartbeat",
                               lambda b: with_(b, "facts.memory.available_mib", -1),
                               field="facts.memory.available_mib"),
    "heartbeat: unknown VM state": Bad("POST", "/hosts/heartbeat", lambda b: with_(
        b, "vms", [{"name": "x", "uuid": "", "state": "dancing", "spec": {
            "name": "x", "datastore": "shared"}}]), field="vms.0.state"),
    "heartbeat: unicode host": Bad("POST", "/hosts/heartbeat",
                                   lambda b: with_(b, "name", "hôst2"), field="name"),
}


async def controller_state(c: Cluster) -> list[Any]:
    """What a refused request must not change: hosts, VMs, events, the baseline, and
    what host1's agent runs."""
    return [(await c.http.get(path)).json() for path in (
        "/hosts", "/vms", "/vms/web1/events", "/cluster/baseline")] + [
        (await c.agent_http["host1"].get("/vms")).json()]


@pytest.mark.parametrize("case", [*CONTROLLER_CASES, *HEARTBEAT_CASES])
async def test_the_controller_refuses_bad_input(cluster: ClusterFactory, lab: Lab,
                                                case: str) -> None:
    bad = {**CONTROLLER_CASES, **HEARTBEAT_CASES}[case]
    async with cluster() as c:
        await c.beat("host1")
        create = {"host": "host1", "spec": lab.spec("web1"), "start": False}
        assert (await c.http.post("/vms", json=create)).status_code == 201
        if bad.path == "/hosts/heartbeat":
            config, app = c.agents["host2"]  # a host the controller does not know yet
            good = (await heartbeat_body(config, app.state.manager)).model_dump(mode="json")
        else:
            good = {**create, "spec": lab.spec("web9")}
        before = await controller_state(c)
        assert_refused(await send(c.http, bad, good), bad)
        assert await controller_state(c) == before


# ---- the agent (its strict request models) ----
AGENT_CASES: dict[str, Bad] = {
    "unknown field": Bad("POST", "/vms", lambda s: with_(s, "colour", "red"), field="colour"),
    "wrong type": Bad("POST", "/migration-network/probe",
                      lambda _: {"address": 5, "port": 1}, field="address"),
    "512 for a number": Bad("POST", "/vms", lambda s: with_(s, "memory_mib", "512"),
                            field="memory_mib"),
    "NaN in a body": Bad("POST", "/migration-network/throughput",
                         content=b'{"address": "127.0.0.1", "port": 9, "seconds": NaN}',
                         field="seconds"),
    "NaN in a query": Bad("POST", "/vms/web1/stop", params={"timeout": "nan"}, field="timeout"),
    "infinity in a body": Bad("POST", "/migration-network/throughput",
                              content=b'{"address": "127.0.0.1", "port": 9, '
                                      b'"seconds": Infinity}', field="seconds"),
    "negative number": Bad("POST", "/vms/web1/dirty-rate", params={"calc_time_ms": "-1"},
                           field="calc_time_ms"),
    "negative in a body": Bad("POST", "/vms", lambda s: with_(s, "vcpus", -2)),
    "overlong string": Bad("POST", "/datastores/files", lambda _: {"files": [
        {"datastore": "shared", "path": "a/" * 1000}]}),
    "overlong name": Bad("POST", "/vms", lambda s: with_(s, "name", "a" * 100)),
    "path outside its root": Bad("POST", "/vms", lambda s: with_(
        s, "disks", [{"datastore": "shared", "path": "../../etc/shadow"}]),
        field="disks[0].path", code="PATH_OUTSIDE_DATASTORE"),
    "kernel outside its roots": Bad("POST", "/vms", lambda s: with_(s, "kernel", "/etc/passwd"),
                                    field="kernel", code="PATH_OUTSIDE_DATASTORE"),
    "console log outside the runtime dir": Bad(
        "POST", "/vms", lambda s: with_(s, "serial_log", "/etc/passwd"), field="serial_log",
        code="SERIAL_LOG_OUTSIDE_RUNTIME"),
    "unicode in a name": Bad("POST", "/vms", lambda s: with_(s, "name", "wéb9")),
    "malformed JSON": Bad("POST", "/vms", content=b'{"name": "web9", ',
                          code="REQUEST_JSON_INVALID"),
    "not JSON": Bad("POST", "/vms", content=b"name=web9", content_type="text/plain",
                    code="REQUEST_CONTENT_TYPE_INVALID"),
}


@pytest.mark.parametrize("case", list(AGENT_CASES))
async def test_the_agent_refuses_bad_input(agent: AgentFactory, lab: Lab, case: str) -> None:
    bad = AGENT_CASES[case]
    async with agent() as http:
        assert (await http.post("/vms", json=lab.spec("web1"),
                                params={"start": "true"})).status_code == 201

        async def state() -> list[Any]:
            return [(await http.get("/vms")).json(), sorted(lab.qemu_pids())]

        before = await state()
        assert_refused(await send(http, bad, lab.spec("web9")), bad)
        assert await state() == before
