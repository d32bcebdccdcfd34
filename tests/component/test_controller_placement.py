"""Placement through the controller's API against fake agents: every host scored or excluded
with its reasons (``GET /vms/{name}/placement``, ``POST /placement``), and must rules
enforced on a user's explicit destination or host (409 ``RULE_VIOLATION``), should rules
broken only with the reason recorded (``controller.placement_service``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


@pytest.fixture
def hosts() -> list[FakeAgent]:
    """host1 runs web1 and web2; host2 lacks vm-net; host3 and host4 are healthy, host4
    with less memory free."""
    return [FakeAgent("host1", host_facts("host1"), {"web1": running(vm_spec("web1")),
                                                     "web2": running(vm_spec("web2"))}),
            FakeAgent("host2", host_facts("host2", port_groups=())),
            FakeAgent("host3", host_facts("host3")),
            FakeAgent("host4", host_facts("host4", available_mib=4096))]


async def placement(c: Controller, vm: str = "web1") -> dict[str, Any]:
    resp = await c.http.get(f"/vms/{vm}/placement")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def excluded(answer: dict[str, Any]) -> dict[str, list[str]]:
    return {e["host"]: [r["code"] for r in e["reasons"]] for e in answer["excluded"]}


async def rule(c: Controller, **body: Any) -> None:
    resp = await c.http.post("/rules", json=body)
    assert resp.status_code == 201, resp.text


async def test_placement_scores_or_excludes_every_host(tmp_path: Path,
                                                       hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        answer = await placement(c)
        assert answer["source"] == "host1" and answer["choice"] == "host3"
        assert [x["host"] for x in answer["candidates"]] == ["host3", "host4"]
        assert answer["candidates"][0]["score"] > answer["candidates"][1]["score"]
        assert excluded(answer) == {"host1": ["MIGRATION_SAME_HOST"],
                                    "host2": ["PORTGROUP_MISSING"]}
        error_of(await c.http.get("/vms/nope/placement"), 404, "VM_NOT_FOUND")


async def test_rules_and_maintenance_exclude_naming_the_reason(
        tmp_path: Path, hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        assert (await c.http.post("/hosts/host4/tags", json={"add": ["fast"]})).status_code == 200
        await rule(c, name="fast", kind="vm-host", vms=["web1"], host_tag="fast")
        answer = await placement(c)
        assert answer["choice"] == "host4"
        reasons = next(e for e in answer["excluded"] if e["host"] == "host3")["reasons"]
        assert [(r["code"], r["rule"]) for r in reasons] == [("RULE_VIOLATION", "fast")]


async def test_an_explicit_destination_that_breaks_a_must_rule_is_refused(
        tmp_path: Path, hosts: list[FakeAgent]) -> None:
    hosts[2].vms["db1"] = running(vm_spec("db1"))
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        await rule(c, name="apart", kind="anti-affinity", vms=["web1", "db1"])
        resp = await c.http.post("/vms/web1/migrations", json={"to": "host3"})
        err = error_of(resp, 409, "RULE_VIOLATION")
        assert "apart" in err["message"] and err["hint"]
        assert (await c.http.get("/migrations")).json() == []
        assert "prepare_incoming" not in c.agents["host3"].calls


async def test_a_broken_should_rule_is_recorded_on_the_job(tmp_path: Path,
                                                          hosts: list[FakeAgent]) -> None:
    hosts[2].vms["db1"] = running(vm_spec("db1"))
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        await rule(c, name="apart", kind="anti-affinity", vms=["web1", "db1"],
                   strength="should")
        answer = await placement(c)
        assert answer["choice"] == "host4"  # keeps the rule, though host3 has more room
        host3 = next(x for x in answer["candidates"] if x["host"] == "host3")
        assert [r["rule"] for r in host3["broken_should"]] == ["apart"]
        resp = await c.http.post("/vms/web1/migrations", json={"to": "host3"})
        assert resp.status_code == 202, resp.text
        message = resp.json()["transitions"][0]["message"]
        assert "RULE_SHOULD_BROKEN" in message and "apart" in message


async def test_a_new_vm_is_placed_and_its_must_rules_kept(tmp_path: Path,
                                                         hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        body = {"spec": vm_spec("web3"), "tags": ["web"]}
        answer = (await c.http.post("/placement", json=body)).json()
        assert answer["source"] is None
        # host1 runs two vCPUs more than host3 with as much memory free
        assert [x["host"] for x in answer["candidates"]] == ["host3", "host1", "host4"]
        assert excluded(answer) == {"host2": ["PORTGROUP_MISSING"]}
        await rule(c, name="webs", kind="anti-affinity", vm_tag="web")
        assert (await c.http.post("/vms/web1/tags", json={"add": ["web"]})).status_code == 200
        answer = (await c.http.post("/placement", json=body)).json()
        assert answer["choice"] == "host3"
        assert excluded(answer)["host1"] == ["RULE_VIOLATION"]
        resp = await c.http.post("/vms", json={"host": "host1", "spec": vm_spec("web3"),
                                               "tags": ["web"]})
        assert "webs" in error_of(resp, 409, "RULE_VIOLATION")["message"]
        error_of(await c.http.post("/placement", json={"spec": {**vm_spec("x"),
                                                                "memory_mib": 0}}),
                 400, "REQUEST_INVALID")
