"""`segue vm placement`, `segue vm migrate` without --to, `segue vm create` without --host
and `segue rule ...`, with the controller's answers canned (the CLI formats and chooses)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from segue.cli.main import app as cli
from segue.clients.controller import ControllerClient
from segue.domain.errors import Conflict, SegueError
from segue.httpapi import STATUS_BY_KIND

NOW = "2026-12-15T10:00:00Z"


def reason(code: str, kind: str = "check", rule: str | None = None) -> dict[str, Any]:
    return {"kind": kind, "code": code, "message": f"{code} msg", "hint": "", "rule": rule}


def candidate(host: str, score: float) -> dict[str, Any]:
    return {"host": host, "score": score, "memory_use": 0.5, "vcpu_use": 0.25,
            "broken_should": [], "warnings": []}


PLACED = {"vm": "web1", "source": "host1", "choice": "host3",
          "candidates": [candidate("host3", 70.0), candidate("host4", 60.0),
                         candidate("host5", 50.0), candidate("host6", 40.0),
                         candidate("host7", 30.0)],
          "excluded": [{"host": "host1", "reasons": [reason("MIGRATION_SAME_HOST")]},
                       {"host": "host2", "reasons": [reason("RULE_VIOLATION", "rule",
                                                            "apart")]}]}
NOWHERE = {**PLACED, "choice": None, "candidates": []}


def job(dest: str) -> dict[str, Any]:
    return {"id": "j1", "vm": "web1", "source": "host1", "destination": dest,
            "phase": "check", "created_at": NOW, "updated_at": NOW, "options": {}}


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> dict[Any, Any]:
    """(method, path) -> the canned answer; ``sent`` keeps every request's JSON body."""
    canned: dict[Any, Any] = {"sent": []}

    def answer(request: httpx.Request) -> httpx.Response:
        canned["sent"].append((request.method, request.url.path,
                               json.loads(request.content) if request.content else None))
        found = canned[(request.method, request.url.path)]
        if isinstance(found, SegueError):
            return httpx.Response(STATUS_BY_KIND[found.kind],
                                  json={"error": found.to_dict(), "kind": found.kind})
        return httpx.Response(200 if found is not None else 204, json=found)

    monkeypatch.setattr(ControllerClient, "from_env", classmethod(
        lambda cls, url=None, token=None: cls("http://controller",
                                              transport=httpx.MockTransport(answer))))
    return canned


def segue(*args: str, code: int = 0) -> str:
    out = CliRunner().invoke(cli, list(args))
    assert out.exit_code == code, out.output
    return out.output


def test_placement_shows_every_candidate_and_every_excluded_host(answers: Any) -> None:
    answers[("GET", "/vms/web1/placement")] = PLACED
    out = segue("vm", "placement", "web1")
    for host in ("host3", "host7", "MIGRATION_SAME_HOST", "RULE_VIOLATION"):
        assert host in out
    assert json.loads(segue("vm", "placement", "web1", "--json"))["choice"] == "host3"


def test_migrate_without_to_takes_the_choice_and_prints_the_runners_up(answers: Any) -> None:
    answers[("GET", "/vms/web1/placement")] = PLACED
    answers[("POST", "/vms/web1/migrations")] = job("host3")
    out = segue("vm", "migrate", "web1", "--no-wait")
    assert ("POST", "/vms/web1/migrations") in [s[:2] for s in answers["sent"]]
    assert answers["sent"][-1][2]["to"] == "host3"
    assert "-> host3" in out and "host6" in out and "host7" not in out  # 3 runners-up
    assert "RULE_VIOLATION" in out and "migration j1 of web1 to host3" in out
    both = json.loads(segue("vm", "migrate", "web1", "--no-wait", "--json"))
    assert both["placement"]["choice"] == "host3" and both["job"]["destination"] == "host3"


def test_migrate_with_no_candidate_exits_1_naming_each_host(answers: Any) -> None:
    answers[("GET", "/vms/web1/placement")] = NOWHERE
    out = segue("vm", "migrate", "web1", code=1)
    assert "NO_PLACEMENT" in out and "host2: RULE_VIOLATION" in out
    assert [s[:2] for s in answers["sent"]] == [("GET", "/vms/web1/placement")]


def test_create_without_host_places_first(answers: Any) -> None:
    answers[("POST", "/placement")] = {**PLACED, "vm": "web3", "source": None}
    answers[("POST", "/vms")] = {
        "name": "web3", "uuid": "u", "host": "host3", "state": "stopped",
        "updated_at": NOW, "spec": {"name": "web3", "datastore": "shared"}}
    out = segue("vm", "create", "web3", "--no-start")
    assert answers["sent"][0][1] == "/placement"
    assert answers["sent"][1][2]["host"] == "host3"
    assert "-> host3" in out and "VM web3" in out


def test_create_with_tags_places_and_defines_it_tagged(answers: Any) -> None:
    answers[("POST", "/placement")] = {**PLACED, "vm": "web3", "source": None}
    answers[("POST", "/vms")] = {
        "name": "web3", "uuid": "u", "host": "host3", "state": "stopped",
        "updated_at": NOW, "spec": {"name": "web3", "datastore": "shared"}, "tags": ["db"]}
    segue("vm", "create", "web3", "--no-start", "--tag", "db", "--tag", "gold")
    assert answers["sent"][0][2]["tags"] == ["db", "gold"]  # the tags' rules place it
    assert answers["sent"][1][2]["tags"] == ["db", "gold"]


def test_rules_are_created_listed_and_a_conflict_exits_1(answers: Any) -> None:
    view = {"name": "apart", "kind": "anti-affinity", "strength": "must",
            "vms": ["db1", "web1"], "created_at": NOW, "created_by": "root"}
    answers[("POST", "/rules")] = view
    out = segue("rule", "create", "apart", "anti-affinity", "--vm", "web1", "--vm", "db1")
    assert "rule apart created: must anti-affinity (db1, web1)" in out
    assert answers["sent"][-1][2]["vms"] == ["web1", "db1"]
    answers[("GET", "/rules")] = [view]
    assert "apart" in segue("rule", "list")
    answers[("POST", "/rules")] = Conflict("RULES_CONTRADICT", "they clash", "drop one")
    assert "RULES_CONTRADICT" in segue("rule", "create", "x", "affinity", "--vm", "web1",
                                       "--vm", "db1", code=1)
    assert "REQUEST_INVALID" in segue("rule", "create", "x", "near", "--vm", "a", code=1)
