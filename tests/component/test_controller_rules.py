"""Placement rules through the controller's API against fake agents: created, listed and
deleted; a malformed rule or a set that cannot be met is refused naming the problem, and
nothing changes (``controller.rule_store``, ``segue.placement.feasibility``)."""

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
    """host1 runs web1 and web2, host2 runs db1; host3 is empty."""
    return [FakeAgent("host1", host_facts("host1"), {"web1": running(vm_spec("web1")),
                                                     "web2": running(vm_spec("web2"))}),
            FakeAgent("host2", host_facts("host2"), {"db1": running(vm_spec("db1"))}),
            FakeAgent("host3", host_facts("host3"))]


async def create(c: Controller, **rule: Any) -> dict[str, Any]:
    resp = await c.http.post("/rules", json=rule)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def names(c: Controller) -> list[str]:
    resp = await c.http.get("/rules")
    assert resp.status_code == 200, resp.text
    return [r["name"] for r in resp.json()]


async def test_rules_are_created_listed_and_deleted(tmp_path: Path,
                                                    hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        made = await create(c, name="apart", kind="anti-affinity", vms=["web2", "web1"])
        assert made["strength"] == "must" and made["vms"] == ["web1", "web2"]
        assert made["created_by"]
        await create(c, name="near", kind="vm-host", vm_tag="web", host_tag="rack1",
                     strength="should")
        assert await names(c) == ["apart", "near"]
        assert (await c.http.delete("/rules/apart")).status_code == 204
        assert await names(c) == ["near"]
        error_of(await c.http.delete("/rules/apart"), 404, "RULE_NOT_FOUND")


@pytest.mark.parametrize(("rule", "status", "code"), [
    ({"name": "x", "kind": "vm-host", "vms": ["web1"]}, 400, "RULE_INVALID"),
    ({"name": "x", "kind": "affinity", "vms": ["web1"]}, 400, "RULE_INVALID"),
    ({"name": "x", "kind": "near", "vms": ["web1", "db1"]}, 400, "REQUEST_INVALID"),
    ({"name": "x", "kind": "affinity", "vms": ["web1", "ghost"]}, 409, "RULE_VM_UNKNOWN"),
    ({"name": "x", "kind": "vm-host", "vms": ["web1"], "host_tag": "gpu"}, 409,
     "RULE_HOST_TAG_UNKNOWN"),
    ({"name": "x", "kind": "affinity", "vms": ["web1", "web2"]}, 409, "RULES_CONTRADICT"),
    ({"name": "apart", "kind": "affinity", "vms": ["db1", "web1"]}, 409, "RULE_EXISTS"),
])
async def test_a_bad_rule_is_refused_naming_the_problem_and_changes_nothing(
        tmp_path: Path, hosts: list[FakeAgent], rule: dict[str, Any], status: int,
        code: str) -> None:
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        await create(c, name="apart", kind="anti-affinity", vms=["web1", "web2"])
        err = error_of(await c.http.post("/rules", json=rule), status, code)
        assert err["hint"]
        if status == 409 and code != "RULE_EXISTS":
            assert "x" in err["details"]["conflict"]["rules"] or code == "RULE_VM_UNKNOWN"
        assert await names(c) == ["apart"]


async def test_a_host_tag_makes_a_must_vm_host_rule_possible(tmp_path: Path,
                                                             hosts: list[FakeAgent]) -> None:
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        rule = {"name": "gpu", "kind": "vm-host", "vms": ["web1"], "host_tag": "gpu"}
        error_of(await c.http.post("/rules", json=rule), 409, "RULE_HOST_TAG_UNKNOWN")
        assert (await c.http.post("/hosts/host3/tags", json={"add": ["gpu"]})).status_code == 200
        await create(c, **rule)
