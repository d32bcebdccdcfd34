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
