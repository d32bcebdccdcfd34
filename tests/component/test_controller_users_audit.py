"""Users and API tokens over the controller's API, and the audit log of every
state-changing request (``controller.api_access``, ``controller.gate``)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from asgi_scopes import token_headers
from fastapi import FastAPI
from test_controller_access import Access, AccessFactory, access, heartbeat
from test_controller_inventory import LoopBridge

from segue.clients.controller import ControllerClient, resolve_token
from segue.controller import audit
from segue.controller.audit import AuditRecord
from segue.controller.db import Database
from segue.controller.inventory_service import InventoryService

__all__ = ["access"]  # the fixture, imported


def code(resp: httpx.Response) -> str:
    return str(resp.json()["error"]["code"])


async def tcp(a: Access, token: str) -> httpx.AsyncClient:
    return await a.client(httpx.ASGITransport(app=a.app), token_headers(token))


async def entries(a: Access, **query: Any) -> list[dict[str, Any]]:
    resp = await a.local.get("/audit", params=query)
    assert resp.status_code == 200, resp.text
    return list(resp.json())


# ---- users and tokens ----

async def test_users_and_tokens_over_the_api(access: AccessFactory) -> None:
    async with access() as a:
        resp = await a.local.post("/users", json={"name": "alice", "role": "operator"})
        assert resp.status_code == 201 and resp.json()["tokens"] == 0
        resp = await a.local.post("/users", json={"name": "alice", "role": "viewer"})
        assert (resp.status_code, code(resp)) == (409, "USER_EXISTS")
        resp = await a.local.post("/users", json={"name": "bob", "role": "root"})
        assert resp.status_code == 400 and resp.json()["error"]["field"] == "role"
        resp = await a.local.post("/users/alice/tokens", json={"role": "admin"})
        assert (resp.status_code, code(resp)) == (400, "TOKEN_ROLE_EXCEEDS_USER")
        resp = await a.local.post("/users/nobody/tokens", json={})
        assert (resp.status_code, code(resp)) == (404, "USER_NOT_FOUND")

        made = (await a.local.post("/users/alice/tokens",
                                   json={"ttl_s": 3600, "note": "laptop"})).json()
        token, token_id = made["token"], made["id"]
        assert token.startswith(f"segue_{token_id}_") and made["state"] == "active"
        listed = (await a.local.get("/users/alice/tokens")).json()
        assert [t["id"] for t in listed] == [token_id] and "token" not in listed[0]
        assert listed[0]["last_used_at"] is None and listed[0]["note"] == "laptop"
        assert [t["id"] for t in (await a.local.get("/tokens")).json()] == [token_id]

        alice = await tcp(a, token)
        resp = await alice.post("/vms/x1/start")
        assert (resp.status_code, code(resp)) == (404, "VM_NOT_FOUND")  # allowed, no such VM
        assert (await a.local.get("/tokens")).json()[0]["last_used_at"] is not None
        # a role change counts at once, for tokens already made
        await a.local.patch("/users/alice", json={"role": "viewer"})
        assert (await alice.post("/vms/x1/start")).status_code == 403
        assert (await alice.get("/vms")).status_code == 200
        await a.local.patch("/users/alice", json={"disabled": True})
        resp = await alice.get("/vms")
        assert (resp.status_code, code(resp)) == (401, "USER_DISABLED")
        await a.local.patch("/users/alice", json={"disabled": False})
        assert (await alice.get("/vms")).status_code == 200
        assert (await a.local.delete("/users/alice")).status_code == 204
        resp = await alice.get("/vms")
        assert (resp.status_code, code(resp)) == (401, "TOKEN_INVALID")
        assert (await a.local.get("/users")).json() == []


async def test_a_token_role_narrows_its_user(access: AccessFactory) -> None:
    async with access() as a:
        narrowed = await tcp(a, await a.user("carol", "admin", token_role="viewer"))
        me = (await narrowed.get("/whoami")).json()
        assert (me["role"], me["token_role"]) == ("admin", "viewer")
        assert "start vm" not in me["permissions"] and "read vm" in me["permissions"]
        resp = await narrowed.post("/vms/x1/start")
        assert resp.status_code == 403 and resp.json()["error"]["details"]["role"] == "viewer"
        assert (await narrowed.get("/users")).status_code == 403


async def test_only_admins_manage_users_and_tokens(access: AccessFactory) -> None:
    async with access() as a:
        operator = await tcp(a, await a.user("op", "operator"))
        for method, path in [("GET", "/users"), ("POST", "/users"), ("GET", "/tokens"),
                             ("POST", "/users/op/tokens"), ("PATCH", "/users/op"),
                             ("DELETE", "/users/op"), ("POST", "/tokens/0123456789ab/revoke"),
                             ("GET", "/audit")]:
            resp = await operator.request(method, path, json={} if method in ("POST", "PATCH")
                                          else None)
            assert resp.status_code == 403, (method, path)
        admin = await tcp(a, await a.user("boss", "admin"))
        resp = await admin.post("/users", json={"name": "dave", "role": "viewer"})
        assert resp.status_code == 201
        resp = await admin.post("/users/dave/tokens", json={})
        assert resp.status_code == 201
        dave = await tcp(a, resp.json()["token"])  # made by an admin over TCP
        assert (await dave.get("/whoami")).json()["name"] == "dave"


# ---- the audit log ----

async def test_state_changes_are_audited_with_actor_target_params_and_outcome(
        access: AccessFactory) -> None:
    async with access() as a:
        operator_token = await a.user("alice", "operator")
        alice = await tcp(a, operator_token)
        viewer = await tcp(a, await a.user("bob", "viewer"))
        h1 = await a.as_host("h1")
        assert (await h1.post("/hosts/heartbeat", json=heartbeat("h1"))).status_code == 200
        assert (await alice.post("/hosts/h1/disable-migration")).status_code == 200
        assert (await alice.post("/vms/x1/start")).status_code == 404
        assert (await viewer.post("/vms/x1/stop", params={"force": "true"})).status_code == 403
        assert (await a.tcp.delete("/vms/x1")).status_code == 401
        bad = f"segue_0123456789ab_{'A' * 43}"
        assert (await a.tcp.post("/vms/x1/start", headers=token_headers(bad))).status_code == 401
        assert (await alice.get("/vms")).status_code == 200  # a read: not audited

        log = await entries(a)
        by_route = {(e["actor"], e["route"]): e for e in log}
        assert not [e for e in log if "heartbeat" in e["route"]]  # too frequent to keep
        assert not [e for e in log if e["method"] == "GET"]
        done = by_route[("alice", "POST /hosts/{name}/disable-migration")]
        assert (done["actor_kind"], done["role"], done["target"], done["status"]) == (
            "user", "operator", "host:h1", 200)
        assert done["token_id"] == operator_token.split("_")[1] and done["error_code"] is None
        failed = by_route[("alice", "POST /vms/{name}/start")]
        assert (failed["target"], failed["status"], failed["error_code"]) == (
            "vm:x1", 404, "VM_NOT_FOUND")
        refused = by_route[("bob", "POST /vms/{name}/stop")]
        assert (refused["status"], refused["error_code"]) == (403, "PERMISSION_DENIED")
        assert refused["params"] == {"query": {"force": "true"}}
        anonymous = by_route[("anonymous", "DELETE /vms/{name}")]
        assert (anonymous["actor_kind"], anonymous["status"], anonymous["error_code"]) == (
            "anonymous", 401, "AUTH_REQUIRED")
        forged = by_route[("token:0123456789ab", "POST /vms/{name}/start")]
        assert (forged["status"], forged["error_code"]) == (401, "TOKEN_INVALID")
        assert bad not in str(log)
        # newest first, each with its time
        assert [e["id"] for e in log] == sorted((e["id"] for e in log), reverse=True)


async def test_bodies_are_kept_without_their_secrets(access: AccessFactory) -> None:
    async with access() as a:
        secret_note = await a.user("alice", "operator")  # a token pasted where it should not be
        resp = await a.local.post("/users/alice/tokens", json={"note": f"old {secret_note}"})
        assert resp.status_code == 201
        new_token = resp.json()["token"]
        resp = await a.local.post("/vms", json={"host": "h1", "spec": {"name": "web9"}})
        assert resp.status_code == 400
        log = await entries(a)
        assert secret_note not in str(log) and new_token not in str(log)
        made = next(e for e in log if e["route"] == "POST /users/{name}/tokens"
                    and e["params"].get("body"))
        assert made["params"]["body"] == {"note": "old [redacted]"}
        assert (made["actor"], made["actor_kind"], made["target"]) == ("root", "local",
                                                                       "user:alice")
        define = next(e for e in log if e["route"] == "POST /vms")
        assert (define["target"], define["status"]) == ("vm:web9", 400)
        assert define["params"]["body"]["spec"] == {"name": "web9"}


async def test_a_handler_that_fails_unexpectedly_is_audited(
        access: AccessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: InventoryService, name: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(InventoryService, "start_vm", broken)
    async with access() as a:
        assert (await a.local.post("/vms/web1/start")).status_code == 500
        (entry,) = await entries(a, target="web1")
        assert (entry["status"], entry["error_code"], entry["actor"]) == (
            500, "INTERNAL_ERROR", "root")


async def test_a_failure_while_identifying_the_caller_answers_500_in_the_shape(
        access: AccessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from segue.controller import callers

    async def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    async with access() as a:
        monkeypatch.setattr(callers, "identify", broken)
        resp = await a.tcp.post("/vms/web1/start")
        assert (resp.status_code, code(resp), resp.json()["kind"]) == (
            500, "INTERNAL_ERROR", "internal")
        monkeypatch.undo()
        (entry,) = await entries(a, target="web1")
        assert (entry["status"], entry["error_code"], entry["actor"]) == (
            500, "INTERNAL_ERROR", "anonymous")


async def test_the_audit_log_is_queried_by_actor_time_target_and_limit(
        access: AccessFactory) -> None:
    async with access() as a:
        alice = await tcp(a, await a.user("alice", "operator"))
        start = datetime.now(UTC)
        for vm in ("a1", "a2", "a3"):
            await alice.post(f"/vms/{vm}/start")
        assert [e["target"] for e in await entries(a, actor="alice")] == [
            "vm:a3", "vm:a2", "vm:a1"]
        assert len(await entries(a, actor="alice", limit=2)) == 2
        assert [e["target"] for e in await entries(a, target="a2")] == ["vm:a2"]
        assert len(await entries(a, target="vm:a2")) == 1
        assert len(await entries(a, actor="alice", since=start.isoformat())) == 3
        assert await entries(a, actor="alice", until=start.isoformat()) == []
        later = (datetime.now(UTC) + timedelta(hours=1)).replace(tzinfo=None)
        assert await entries(a, since=later.isoformat()) == []  # no zone: UTC
        resp = await a.local.get("/audit", params={"limit": 0})
        assert resp.status_code == 400


async def test_old_entries_are_pruned_at_start(access: AccessFactory) -> None:
    old = datetime.now(UTC) - timedelta(days=10)
    async with access() as a:
        db: Database = a.app.state.db
        for i in range(3):
            await db.run(audit.record, AuditRecord(
                at=old + timedelta(minutes=i), actor="alice", actor_kind="user",
                role="admin", token_id=None, method="POST", route="POST /x", path="/x",
                target=None, status=200, error_code=None, duration_ms=0.0))
        assert len(await entries(a)) == 3
    async with access(audit={"max_age_days": 5}) as a:
        deadline = time.monotonic() + 5
        while await entries(a):
            assert time.monotonic() < deadline, "the old entries were not pruned"
            await asyncio.sleep(0.05)


# ---- the CLI, end to end ----

class TcpBridge(LoopBridge):
    """LoopBridge, but the controller sees TCP (not its unix socket): credentials count."""

    def __init__(self, app: FastAPI, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(app, loop)
        self._asgi = httpx.ASGITransport(app=app)


async def test_cli_manages_users_and_tokens_and_reads_the_audit_log(
        access: AccessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from segue.cli.main import app as cli

    async with access() as a:
        loop = asyncio.get_running_loop()
        local, remote = LoopBridge(a.app, loop), TcpBridge(a.app, loop)
        monkeypatch.delenv("SEGUE_TOKEN", raising=False)
        monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")

        def from_env(cls: type[ControllerClient], url: str | None = None,
                     token: str | None = None) -> ControllerClient:
            bridge = local if url == "unix:/run/segue/controller.sock" else remote
            return cls(url or "http://controller", transport=bridge,
                       token=resolve_token(token))

        monkeypatch.setattr(ControllerClient, "from_env", classmethod(from_env))
        root = ["--url", "unix:/run/segue/controller.sock"]

        async def segue(*args: str, code: int = 0) -> str:
            result = await asyncio.to_thread(CliRunner().invoke, cli, list(args))
            assert result.exit_code == code, result.output
            return result.output

        assert "role admin" in await segue("user", "create", "alice", "--role", "admin", *root)
        out = await segue("token", "create", "--user", "alice", "--ttl", "30d", "--note",
                          "laptop", *root)
        token = next(w for w in out.split() if w.startswith("segue_"))
        assert "shown once" in out
        # over TCP: nothing without the token, everything an admin may with it
        assert "AUTH_REQUIRED" in await segue("user", "list", code=1)
        assert "alice" in await segue("--token", token, "user", "list")
        monkeypatch.setenv("SEGUE_TOKEN", token)
        assert "user alice, role admin" in await segue("whoami")
        await segue("user", "create", "bob", "--role", "viewer")
        assert "role operator" in await segue("user", "set-role", "bob", "operator")
        assert "REQUEST_INVALID: role" in await segue("user", "set-role", "bob", "root",
                                                      code=1)
        out = await segue("token", "create", "--user", "bob", "--role", "viewer", "--json")
        bob_id = json.loads(out)["id"]
        listed = await segue("token", "list")
        assert bob_id in listed and token not in listed and "laptop" in listed
        assert "revoked" in await segue("token", "revoke", bob_id)
        assert "disabled" in await segue("user", "disable", "bob")
        assert "deleted" in await segue("user", "delete", "bob")
        entries_ = json.loads(await segue("events", "--actor", "alice", "--since", "1h",
                                          "--json"))
        routes = [e["route"] for e in entries_]
        assert "DELETE /users/{name}" in routes and "POST /users" in routes
        assert all(e["actor"] == "alice" for e in entries_)
        table = await segue("events", "--target", "user:bob")
        assert "DELETE /users/{name}" in table and "alice (user)" in table
        assert "root (local)" in await segue("events", "--actor", "root")
        assert "CLI_TIME_INVALID" in await segue("events", "--since", "yesterday", code=1)
