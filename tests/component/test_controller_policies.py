"""Tags and user-defined policies through the controller's API, against fake agents: each
policy kind refuses with 403 POLICY_DENIED, shows in ``--check`` and ``where`` as a
``policy`` result, and the refusal is in the audit log (``controller.policy_gate``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_scopes import token_headers
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

from segue.api.migration import MigrationOptionsBody
from segue.api.vm import VMInfo
from segue.security.errors import PolicyDenied

ALL_DAY = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "hours": "00:00-24:00"}


class StartStopAgent(FakeAgent):
    """A fake agent that also starts and stops its VMs."""

    async def start_vm(self, name: str, generation: int | None = None) -> VMInfo:
        self._answer("start_vm")
        self.vms[name]["state"] = "running"
        return self._vm(name)

    async def stop_vm(self, name: str, timeout: float = 30.0, force: bool = False,
                      generation: int | None = None) -> VMInfo:
        self._answer("stop_vm")
        self.vms[name]["state"] = "stopped"
        return self._vm(name)


@pytest.fixture
def hosts() -> list[FakeAgent]:
    """host1 runs web1; host2 and host3 could take it."""
    return [StartStopAgent("host1", host_facts("host1"), {"web1": running(vm_spec())}),
            StartStopAgent("host2", host_facts("host2")),
            StartStopAgent("host3", host_facts("host3"))]


@asynccontextmanager
async def cluster(tmp_path: Path, hosts: list[FakeAgent]) -> AsyncIterator[Controller]:
    async with controller(tmp_path, hosts) as c:
        await cluster_of(c)
        yield c


async def apply(c: Controller, *policies: dict[str, Any]) -> None:
    resp = await c.http.put("/policies", json={"policies": list(policies)})
    assert resp.status_code == 200, resp.text


async def tag(c: Controller, kind: str, name: str, *tags: str) -> None:
    resp = await c.http.post(f"/{kind}s/{name}/tags", json={"add": list(tags)})
    assert resp.status_code == 200, resp.text


def denied(resp: httpx.Response, policy: str) -> dict[str, Any]:
    err = error_of(resp, 403, "POLICY_DENIED")
    assert [d["policy"] for d in err["details"]["denials"]] == [policy], err
    assert policy in err["message"] and err["hint"]
    return err


def policy_results(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in answer["results"] if r["check"] == "policy"]


async def check(client: httpx.AsyncClient, to: str, **body: Any) -> dict[str, Any]:
    resp = await client.post("/vms/web1/migrations/check", json={"to": to, **body})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def where(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    resp = await client.get("/vms/web1/where")
    assert resp.status_code == 200, resp.text
    assert "policy" in resp.json()["checks"]
    return {row["host"]: row for row in resp.json()["hosts"]}


async def audited_refusals(c: Controller, target: str = "vm:web1") -> list[tuple[str, int]]:
    resp = await c.http.get("/audit", params={"target": target})
    return [(e["route"], e["status"]) for e in resp.json() if e["error_code"] == "POLICY_DENIED"]


async def as_user(c: Controller, name: str, role: str, *tags: str) -> httpx.AsyncClient:
    assert (await c.http.post("/users", json={"name": name, "role": role})).status_code == 201
    resp = await c.http.put(f"/users/{name}/tags", json={"tags": list(tags)})
    assert resp.status_code == 200 and resp.json()["tags"] == sorted(tags), resp.text
    token = (await c.http.post(f"/users/{name}/tokens", json={})).json()["token"]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=c.app),
                             base_url="http://controller", headers=token_headers(token))


# ---- tags and the policy set ----

async def test_tags_are_set_shown_and_checked(tmp_path: Path, hosts: list[FakeAgent]) -> None:
    async with cluster(tmp_path, hosts) as c:
        await tag(c, "vm", "web1", "web", "pci")
        await tag(c, "host", "host2", "pci")
        assert (await c.http.get("/vms/web1")).json()["tags"] == ["pci", "web"]
        assert {v["name"]: v["tags"] for v in (await c.http.get("/vms")).json()} == {
            "web1": ["pci", "web"]}
        assert (await c.http.get("/hosts/host2")).json()["tags"] == ["pci"]
        listed = {h["name"]: h["tags"] for h in (await c.http.get("/hosts")).json()}
        assert listed == {"host1": [], "host2": ["pci"], "host3": []}
        resp = await c.http.post("/vms/web1/tags", json={"remove": ["web"]})
        assert resp.json() == {"kind": "vm", "name": "web1", "tags": ["pci"]}
        error_of(await c.http.post("/vms/nope/tags", json={"add": ["x"]}), 404, "VM_NOT_FOUND")
        error_of(await c.http.post("/hosts/nope/tags", json={"add": ["x"]}), 404,
                 "HOST_NOT_FOUND")
        error_of(await c.http.post("/vms/web1/tags", json={"add": ["a b"]}), 400,
                 "REQUEST_INVALID")
        error_of(await c.http.post("/vms/web1/tags", json={"add": ["x"], "remove": ["x"]}),
                 400, "TAG_INVALID")
        assert (await c.http.get("/vms/web1")).json()["tags"] == ["pci"]
        alice = await as_user(c, "alice", "operator", "web")
        assert (await c.http.get("/users/alice")).json()["tags"] == ["web"]
        error_of(await alice.post("/vms/web1/tags", json={"add": ["web"]}), 403,
                 "PERMISSION_DENIED")  # tags decide policies: an admin's


async def test_a_policy_set_is_applied_whole_or_not_at_all(tmp_path: Path,
                                                           hosts: list[FakeAgent]) -> None:
    async with cluster(tmp_path, hosts) as c:
        await apply(c, {"name": "pci", "kind": "placement", "tag": "pci"})
        before = (await c.http.get("/policies")).json()
        assert [p["name"] for p in before["policies"]] == ["pci"]
        assert before["policies"][0]["entry"]["host_tag"] == "pci"  # defaults filled in
        assert before["applied_by"] == "local root"
        resp = await c.http.put("/policies", json={"policies": [
            {"name": "ok", "kind": "encryption-required", "tag": "secret"},
            {"name": "w", "kind": "migration-window", "tag": "db", "days": ["funday"],
             "hours": "09:00-17:00"}]})
        err = error_of(resp, 400, "POLICY_INVALID")
        assert err["field"] == "policy[1].days" and 'policy[1] "w"' in err["message"]
        assert (await c.http.get("/policies")).json() == before  # nothing changed
        entries = (await c.http.get("/audit")).json()
        assert any(e["route"] == "PUT /policies" and e["status"] == 400 for e in entries)
        await apply(c)
        assert (await c.http.get("/policies")).json()["policies"] == []


# ---- each kind ----

async def test_placement_refuses_create_start_and_migrate_off_tagged_hosts(
        tmp_path: Path, hosts: list[FakeAgent]) -> None:
    async with cluster(tmp_path, hosts) as c:
        await apply(c, {"name": "pci-hosts", "kind": "placement", "tag": "pci"})
        await tag(c, "vm", "web1", "pci")
        await tag(c, "host", "host2", "pci")
        denied(await c.http.post("/vms/web1/migrations", json={"to": "host3"}), "pci-hosts")
        [result] = policy_results(await check(c.http, "host3"))
        assert (result["code"], result["severity"]) == ("POLICY_DENIED", "error")
        assert result["facts"]["policy"] == "pci-hosts"
        assert [r["code"] for r in policy_results(await check(c.http, "host2"))] == [
            "POLICY_OK"]
        rows = await where(c.http)
        assert rows["host3"]["checks"]["policy"] == "error" and rows["host3"]["ok"] is False
        assert rows["host2"]["checks"]["policy"] == "ok" and rows["host2"]["ok"] is True
        denied(await c.http.post("/vms/web1/start"), "pci-hosts")  # host1 is not pci
        resp = await c.http.post("/vms", json={"host": "host3", "tags": ["pci"],
                                               "spec": vm_spec("db9")})
        denied(resp, "pci-hosts")
        assert "define_vm" not in c.agents["host3"].calls
        resp = await c.http.post("/vms", json={"host": "host2", "tags": ["pci"],
                                               "spec": vm_spec("db9")})
        assert resp.status_code == 201 and resp.json()["tags"] == ["pci"], resp.text
        assert await audited_refusals(c) == [("POST /vms/{name}/start", 403),
                                             ("POST /vms/{name}/migrations", 403)]
        assert await audited_refusals(c, "vm:db9") == [("POST /vms", 403)]


async def test_encryption_required_refuses_an_unencrypted_migration(
        tmp_path: Path, hosts: list[FakeAgent]) -> None:
    async with cluster(tmp_path, hosts) as c:
        await apply(c, {"name": "secret-tls", "kind": "encryption-required", "tag": "secret"})
        await tag(c, "vm", "web1", "secret")
        [result] = policy_results(await check(c.http, "host3", tls=False))
        assert (result["code"], result["facts"]["policy"]) == ("POLICY_DENIED", "secret-tls")
        assert [r["code"] for r in policy_results(await check(c.http, "host3"))] == [
            "POLICY_OK"]
        denied(await c.http.post("/vms/web1/migrations", json={"to": "host3", "tls": False}),
               "secret-tls")
        assert (await c.http.get("/migrations")).json() == []


async def test_a_migration_window_stops_automated_moves_and_users_when_listed(
        tmp_path: Path, hosts: list[FakeAgent]) -> None:
    async with cluster(tmp_path, hosts) as c:
        freeze = {"name": "db-freeze", "kind": "migration-window", "tag": "db", **ALL_DAY}
        await apply(c, freeze)
        await tag(c, "vm", "web1", "db")
        for initiator in ("maintenance", "drs", "ha"):  # the function later loops call
            with pytest.raises(PolicyDenied) as caught:
                await c.app.state.migrations.request("web1", "host3", MigrationOptionsBody(),
                                                     initiator=initiator)
            assert caught.value.details["denials"][0]["policy"] == "db-freeze"
        assert (await c.http.get("/migrations")).json() == []
        # a user's own request passes this policy
        assert [r["code"] for r in policy_results(await check(c.http, "host3"))] == [
            "POLICY_OK"]

        await apply(c, {**freeze, "initiators": ["user"]})
        denied(await c.http.post("/vms/web1/migrations", json={"to": "host3"}), "db-freeze")
        assert policy_results(await check(c.http, "host3"))[0]["code"] == "POLICY_DENIED"
        rows = await where(c.http)
        assert {h: r["checks"]["policy"] for h, r in rows.items()} == {"host2": "error",
                                                                        "host3": "error"}
        assert await audited_refusals(c) == [("POST /vms/{name}/migrations", 403)]


async def test_role_tags_keep_an_operator_to_the_vms_of_its_tags(
        tmp_path: Path, hosts: list[FakeAgent]) -> None:
    async with cluster(tmp_path, hosts) as c:
        await apply(c, {"name": "own-tags", "kind": "role-tags", "role": "operator"})
        await tag(c, "vm", "web1", "db")
        alice = await as_user(c, "alice", "operator", "web")
        async with alice:
            denied(await alice.post("/vms/web1/migrations", json={"to": "host3"}), "own-tags")
            denied(await alice.post("/vms/web1/stop"), "own-tags")
            denied(await alice.post("/vms/web1/start"), "own-tags")
            assert policy_results(await check(alice, "host3"))[0]["code"] == "POLICY_DENIED"
            assert {r["checks"]["policy"] for r in (await where(alice)).values()} == {"error"}
            # root is no operator: its check passes the policy
            assert policy_results(await check(c.http, "host3"))[0]["code"] == "POLICY_OK"
            resp = await c.http.get("/audit", params={"actor": "alice"})
            refused = [(e["route"], e["status"], e["error_code"]) for e in resp.json()
                       if e["route"] != "POST /vms/{name}/migrations/check"]
            assert refused == [("POST /vms/{name}/start", 403, "POLICY_DENIED"),
                               ("POST /vms/{name}/stop", 403, "POLICY_DENIED"),
                               ("POST /vms/{name}/migrations", 403, "POLICY_DENIED")]

            await tag(c, "vm", "web1", "web")  # now one of alice's tags
            assert policy_results(await check(alice, "host3"))[0]["code"] == "POLICY_OK"
            resp = await alice.post("/vms/web1/stop")
            assert resp.status_code == 200, resp.text
            assert "stop_vm" in c.agents["host1"].calls
