"""Maintenance mode through the controller's API against fake agents: a host in either
maintenance state refuses new VMs (create, start), migrations to it and placements on it
(``HOST_IN_MAINTENANCE``), and shows its state."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_controller_checks import (
    Controller,
    FakeAgent,
    cluster_of,
    controller,
    error_of,
    host_facts,
    running,
    vm_spec,
)

from segue.controller import inventory
from segue.domain.maintenance import MaintenanceState


@pytest.fixture
def hosts() -> list[FakeAgent]:
    """host1 runs web1 and has db1 stopped; host2 and host3 are healthy and empty."""
    stopped = {**running(vm_spec("db1")), "state": "stopped", "pid": None}
    return [FakeAgent("host1", host_facts("host1"), {"web1": running(vm_spec("web1")),
                                                     "db1": stopped}),
            FakeAgent("host2", host_facts("host2")),
            FakeAgent("host3", host_facts("host3"))]


def set_state(c: Controller, host: str, *states: MaintenanceState) -> None:
    with c.app.state.db.session() as s:
        row = inventory.get_host(s, host)
        for state in states:
            inventory.set_maintenance(row, state, "testing")


@pytest.mark.parametrize("states", [(MaintenanceState.ENTERING,),
                                    (MaintenanceState.ENTERING, MaintenanceState.IN)])
async def test_a_host_in_maintenance_takes_no_new_vm(
        tmp_path: Path, hosts: list[FakeAgent], states: tuple[MaintenanceState, ...]) -> None:
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        set_state(c, "host2", *states)
        set_state(c, "host1", *states)
        view = (await c.http.get("/hosts/host2")).json()
        assert view["maintenance_state"] == states[-1].value and view["maintenance"] is True
        assert view["maintenance_reason"] == "testing"
        resp = await c.http.post("/vms/web1/migrations", json={"to": "host2"})
        assert resp.status_code == 409, resp.text
        assert "HOST_IN_MAINTENANCE" in resp.text
        placement = (await c.http.get("/vms/web1/placement")).json()
        assert placement["choice"] == "host3"
        reasons = {e["host"]: [r["code"] for r in e["reasons"]] for e in placement["excluded"]}
        assert "HOST_IN_MAINTENANCE" in reasons["host2"]
        created = await c.http.post("/vms", json={"host": "host2", "spec": vm_spec("new1")})
        assert "host2" in error_of(created, 409, "HOST_IN_MAINTENANCE")["message"]
        new = (await c.http.post("/placement", json={"spec": vm_spec("new1")})).json()
        assert new["choice"] == "host3"
        error_of(await c.http.post("/vms/db1/start"), 409, "HOST_IN_MAINTENANCE")
        assert hosts[1].vms.keys() == set() and hosts[0].vms["db1"]["state"] == "stopped"
        listed = {h["name"]: h["maintenance_state"] for h in
                  (await c.http.get("/hosts")).json()}
        assert listed["host3"] == "normal"


async def enter(c: Controller, host: str = "host1", **body: object) -> dict[str, object]:
    resp = await c.http.post(f"/hosts/{host}/maintenance/enter", json=body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def test_dry_run_answers_the_preflight_and_changes_nothing(
        tmp_path: Path, hosts: list[FakeAgent]) -> None:
    hosts[0].vms["app1"] = running(vm_spec("app1", memory_mib=2048))
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        await c.http.post("/hosts/host2/tags", json={"add": ["one"]})
        resp = await c.http.post("/rules", json={"name": "pin", "kind": "vm-host",
                                                 "vms": ["web1"], "host_tag": "one"})
        assert resp.status_code == 201, resp.text
        answer = await enter(c, dry_run=True, max_parallel=2)
        assert answer["dry_run"] is True and answer["state"] == "normal"
        rows = {r["vm"]: r for r in answer["vms"]}  # type: ignore[attr-defined]
        assert [r["vm"] for r in answer["vms"]] == ["app1", "web1", "db1"]  # type: ignore
        assert rows["app1"]["dest"] == "host2"  # heaviest first: equal hosts, by name
        assert rows["web1"]["dest"] == "host2"
        assert rows["db1"]["dest"] in ("host2", "host3")  # stopped: re-homed
        assert rows["db1"]["running"] is False and rows["db1"]["predicted_s"] == 0
        assert 0 < rows["web1"]["predicted_s"] < rows["app1"]["predicted_s"]
        assert answer["predicted_s"] == rows["app1"]["end_s"]  # both run at once
        host = (await c.http.get("/hosts/host1")).json()
        assert host["maintenance_state"] == "normal"
        assert (await c.http.get("/migrations")).json() == []


async def test_a_must_rule_blocker_is_named_and_the_host_is_left_entering(
        tmp_path: Path, hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        await c.http.post("/hosts/host1/tags", json={"add": ["home"]})
        resp = await c.http.post("/rules", json={"name": "stay", "kind": "vm-host",
                                                 "vms": ["web1"], "host_tag": "home"})
        assert resp.status_code == 201, resp.text
        answer = await enter(c)
        rows = {r["vm"]: r for r in answer["vms"]}  # type: ignore[attr-defined]
        assert rows["web1"]["blocker"] == "MUST_RULE" and "stay" in rows["web1"]["message"]
        assert answer["state"] == "entering-maintenance"
        assert "web1: MUST_RULE" in str(answer["reason"])
        host = (await c.http.get("/hosts/host1")).json()
        assert host["maintenance_state"] == "entering-maintenance"
        assert "web1: MUST_RULE" in host["maintenance_reason"]


async def test_an_empty_host_enters_at_once_and_exit_returns_it_to_normal(
        tmp_path: Path, hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        answer = await enter(c, "host3")
        assert answer["state"] == "in-maintenance" and answer["vms"] == []
        error_of(await c.http.post("/hosts/host3/maintenance/enter", json={}), 409,
                 "MAINTENANCE_TRANSITION_INVALID")
        error_of(await c.http.post("/hosts/host3/maintenance/exit",
                                   json={"return": True, "max_parallel": 0}),
                 400, "REQUEST_INVALID")
        assert (await c.http.get("/hosts/host3")).json()["maintenance_state"] == \
            "in-maintenance"
        resp = await c.http.post("/hosts/host3/maintenance/exit", json={})
        assert resp.status_code == 200 and resp.json()["state"] == "normal"
        error_of(await c.http.post("/hosts/host3/maintenance/exit", json={}), 409,
                 "MAINTENANCE_TRANSITION_INVALID")
        error_of(await c.http.post("/hosts/nope/maintenance/enter", json={}), 404,
                 "HOST_NOT_FOUND")
        error_of(await c.http.post("/hosts/host3/maintenance/enter",
                                   json={"max_parallel": 0}), 400, "REQUEST_INVALID")
