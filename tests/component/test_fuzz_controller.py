"""The controller's API fuzzed from its own OpenAPI document (schemathesis, ``openapi_fuzz``):
a controller with two fake agents (``host1`` runs ``web1``, ``host2`` is empty), every
operation sent positive and negative examples,

- over TCP without credentials: every route but ``GET /health`` answers 401
  ``AUTH_REQUIRED`` and nothing changes, neither in the database (the audit log aside,
  which records the refusals) nor at an agent;
- with an admin's token: no 500, no 422, errors in the one error shape, successes as their
  schema says, requests the schema forbids refused.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from openapi_fuzz import Fuzzer, Scopes, check_answer, check_refused, load, stop_apps
from schemathesis import GenerationMode
from schemathesis.python.asgi import get_client
from test_controller_checks import (
    REPORTED,
    FakeAgent,
    FakePool,
    host_facts,
    running,
    vm_info,
    vm_spec,
)

from segue.api.vm import VMInfo
from segue.controller.app import create_app
from segue.controller.config import ControllerConfig

MAX_EXAMPLES = 25  # per operation and mode: under two minutes for the whole API here
OPEN = {"GET /health", "GET /cluster/ca", "POST /join", "GET /cluster/crl",
        "GET /cluster/trust"}  # public routes (authz.public)
CHANGING = ("POST", "PUT", "PATCH", "DELETE")
NOT_STATE = {"audit_log"}  # written for every state-changing request, refused ones too


class LifeCycleAgent(FakeAgent):
    """A fake agent that also starts, stops and destroys its VMs (plain field changes)."""

    async def start_vm(self, name: str, generation: int | None = None) -> VMInfo:
        self._answer("start_vm")
        self._vm(name)
        self.vms[name]["state"] = "running"
        return vm_info(self.name, self.vms[name])

    async def stop_vm(self, name: str, timeout: float = 30.0, force: bool = False,
                      generation: int | None = None) -> VMInfo:
        self._answer("stop_vm")
        self._vm(name)
        self.vms[name]["state"] = "stopped"
        return vm_info(self.name, self.vms[name])

    async def destroy_vm(self, name: str, generation: int | None = None) -> None:
        self._answer("destroy_vm")
        self._vm(name)
        del self.vms[name]


@dataclass
class Controller:
    fuzzer: Fuzzer
    scopes: Scopes
    agents: dict[str, FakeAgent]
    database: Path
    admin_token: str

    def state(self) -> dict[str, Any]:
        """Every table but the audit log, and what the agents were asked."""
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as db:
            tables = [row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            rows = {t: db.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall()
                    for t in tables if t not in NOT_STATE}
        return {"tables": rows, "agent calls": {n: list(a.calls) for n, a in self.agents.items()}}


def setup_as_root(scopes: Scopes, agents: dict[str, FakeAgent]) -> str:
    """Heartbeats of both hosts, and an admin with a token (root, on the unix socket);
    the token."""
    scopes.local = True
    try:
        with get_client(scopes) as http:
            for name, agent in agents.items():
                resp = http.post("/hosts/heartbeat", json={
                    "name": name, "url": f"http://{name}:7600", "facts": agent.facts_,
                    "vms": [{k: vm[k] for k in REPORTED} for vm in agent.vms.values()]})
                assert resp.status_code == 200, resp.text
            assert http.post("/users", json={"name": "fuzz-admin", "role": "admin"}
                             ).status_code == 201
            resp = http.post("/users/fuzz-admin/tokens", json={})
            assert resp.status_code == 201, resp.text
            return str(resp.json()["token"])
    finally:
        scopes.local = False


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    agents: dict[str, FakeAgent] = {
        "host1": LifeCycleAgent("host1", host_facts("host1"), {"web1": running(vm_spec())}),
        "host2": LifeCycleAgent("host2", host_facts("host2"))}
    database = tmp_path / "c.db"
    app = create_app(ControllerConfig(create_database=True, database_url=f"sqlite:///{database}",
                                      heartbeat_timeout=3600.0), FakePool(agents))
    scopes = Scopes(app)
    scopes.local = True  # the OpenAPI document is not open either
    try:
        schema = load(scopes)  # the app's lifespan runs from here to stop_apps
        token = setup_as_root(scopes, agents)
        yield Controller(Fuzzer(schema, MAX_EXAMPLES), scopes, agents, database, token)
    finally:
        stop_apps()


def refused_without_credentials(case: schemathesis.Case,
                                response: schemathesis.Response) -> None:
    assert response.status_code == 401, f"{response.status_code} without credentials"
    assert response.headers.get("www-authenticate") == ["Bearer"] or \
        response.headers.get("www-authenticate") == "Bearer", response.headers
    error = response.json()["error"]
    assert error["code"] == "AUTH_REQUIRED", error


def test_without_credentials_every_fuzzed_request_is_refused_and_changes_nothing(
        controller: Controller) -> None:
    fuzzer = controller.fuzzer
    before = controller.state()
    operations = [op for op in fuzzer.operations() if op.label not in OPEN]
    assert any(op.method.upper() in CHANGING for op in operations)
    for operation in operations:
        fuzzer.run(operation, GenerationMode.POSITIVE, refused_without_credentials)
        fuzzer.run(operation, GenerationMode.NEGATIVE, refused_without_credentials)
    fuzzer.assert_clean()
    assert fuzzer.statuses[401] == fuzzer.requests > 20 * len(operations)
    assert controller.state() == before


def test_an_admins_fuzzed_requests_never_fail_the_controller(controller: Controller) -> None:
    fuzzer = controller.fuzzer
    admin = {"Authorization": f"Bearer {controller.admin_token}"}
    started = time.monotonic()
    for operation in fuzzer.operations():
        fuzzer.run(operation, GenerationMode.POSITIVE, check_answer, headers=admin)
        fuzzer.run(operation, GenerationMode.NEGATIVE, check_refused, headers=admin)
        # the operations on a VM or a host, on one that exists
        fuzzer.run(operation, GenerationMode.POSITIVE, check_answer, headers=admin,
                   path_parameters={"name": "web1"})
    print(f"\n{fuzzer.requests} requests in {time.monotonic() - started:.0f} s, answers "
          f"{sorted(fuzzer.statuses.items())}; nothing to negate: {fuzzer.nothing_to_negate}")
    print("\n".join(f"{n:5} {code}" for code, n in sorted(fuzzer.codes.items())))
    fuzzer.assert_clean()
    assert fuzzer.requests > 20 * len(fuzzer.operations())
    assert fuzzer.statuses[401] == 0, "the admin's token stopped working"
    assert fuzzer.statuses[200] + fuzzer.statuses[201] >= 30, fuzzer.statuses


def test_a_migration_id_in_a_path_is_bounded(controller: Controller) -> None:
    """Found by the fuzzer: the id was any text (nothing to negate); now as bounded as a name."""
    admin = {"Authorization": f"Bearer {controller.admin_token}"}
    with get_client(controller.scopes) as http:
        for bad in ("x" * 65, "-x", "a b"):
            resp = http.get(f"/migrations/{bad}", headers=admin)
            assert resp.status_code == 400, resp.text
            error = resp.json()["error"]
            assert (error["code"], error["field"]) == ("REQUEST_INVALID", "migration_id")
        resp = http.post(f"/migrations/{'y' * 65}/cancel", headers=admin)
        assert resp.status_code == 400, resp.text
        resp = http.get("/migrations/6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b", headers=admin)
        assert resp.json()["error"]["code"] == "MIGRATION_NOT_FOUND"
