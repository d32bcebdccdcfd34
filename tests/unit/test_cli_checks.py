"""`segue vm migrate --check`, a refused migration, `segue vm where`, `segue cluster ...`,
with the controller's answers canned (the CLI only formats them)."""

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


def result(check: str, code: str, severity: str, hint: str = "") -> dict[str, Any]:
    return {"check": check, "code": code, "severity": severity, "message": f"{code} msg",
            "hint": hint, "facts": {}}


OK = [result("request", "REQUEST_OK", "ok"), result("network", "MIGRATION_LINK_UNDER_10G",
                                                     "warning", "faster link")]
BAD = [result("request", "REQUEST_OK", "ok"),
       result("cpu", "CPU_FEATURE_MISSING", "error", "use the baseline")]
CHECKS = ["request", "cpu", "network"]


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str], Any]:
    """(method, path) -> the controller's canned answer, or a SegueError it answers with."""
    canned: dict[tuple[str, str], Any] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        found = canned[(request.method, request.url.path)]
        if isinstance(found, SegueError):
            return httpx.Response(STATUS_BY_KIND[found.kind],
                                  json={"error": found.to_dict(), "kind": found.kind})
        return httpx.Response(200, json=found)

    monkeypatch.setattr(ControllerClient, "from_env", classmethod(
        lambda cls, url=None, token=None: cls("http://controller",
                                              transport=httpx.MockTransport(answer))))
    return canned


def segue(*args: str, code: int = 0) -> str:
    out = CliRunner().invoke(cli, list(args))
    assert out.exit_code == code, out.output
    return out.output


def check_answer(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"vm": "web1", "source": "host1", "destination": "host2",
            "ok": all(r["severity"] != "error" for r in results), "results": results}


def test_check_prints_the_table_and_exits_0_on_warnings(answers: dict[Any, Any]) -> None:
    answers[("POST", "/vms/web1/migrations/check")] = check_answer(OK)
    out = segue("vm", "migrate", "web1", "--to", "host2", "--check")
    assert "MIGRATION_LINK_UNDER_10G" in out and "faster link" in out and "REQUEST_OK" in out


def test_check_exits_1_on_an_error(answers: dict[Any, Any]) -> None:
    answers[("POST", "/vms/web1/migrations/check")] = check_answer(BAD)
    out = segue("vm", "migrate", "web1", "--to", "host2", "--check", code=1)
    assert "CPU_FEATURE_MISSING" in out and "use the baseline" in out
    out = segue("vm", "migrate", "web1", "--to", "host2", "--check", "--json", code=1)
    assert json.loads(out)["ok"] is False


def test_refused_migration_prints_the_failures(answers: dict[Any, Any]) -> None:
    answers[("POST", "/vms/web1/migrations")] = Conflict(
        "MIGRATION_CHECKS_FAILED", "web1 cannot migrate", "see --check", results=BAD)
    out = segue("vm", "migrate", "web1", "--to", "host2", code=1)
    assert "CPU_FEATURE_MISSING" in out and "REQUEST_OK" not in out
    assert "MIGRATION_CHECKS_FAILED" in out  # the error line (stderr, mixed in by the runner)
    run = CliRunner().invoke(cli, ["vm", "migrate", "web1", "--to", "host2", "--json"])
    assert run.exit_code == 1 and "MIGRATION_CHECKS_FAILED" in run.stderr
    body = json.loads(run.stdout)
    assert body["error"]["details"]["results"][1]["code"] == "CPU_FEATURE_MISSING"


def test_where_prints_the_matrix(answers: dict[Any, Any]) -> None:
    answers[("GET", "/vms/web1/where")] = {"vm": "web1", "source": "host1", "checks": CHECKS,
                                           "hosts": [
        {"host": "host2", "ok": False, "results": BAD,
         "checks": {"request": "ok", "cpu": "error", "network": "ok"}},
        {"host": "host3", "ok": True, "results": OK,
         "checks": {"request": "ok", "cpu": "ok", "network": "warning"}}]}
    out = segue("vm", "where", "web1")
    lines = {line.split()[1]: line for line in out.splitlines() if "host" in line[:8]}
    assert "✗" in lines["host2"] and "CPU_FEATURE_MISSING" in lines["host2"]
    assert "!" in lines["host3"] and "✗" not in lines["host3"] and "yes" in lines["host3"]
    assert json.loads(segue("vm", "where", "web1", "--json"))["hosts"][1]["ok"] is True


def test_cluster_baseline_and_raise(answers: dict[Any, Any]) -> None:
    view = {"model": "qemu64", "features": ["aes"], "cpu_model": "qemu64,+aes",
            "updated_at": None, "live_vms": 1, "raisable": ["avx"],
            "hosts": [{"name": "host1", "connected": True, "missing": []},
                      {"name": "host2", "connected": False, "missing": ["aes"]}]}
    answers[("GET", "/cluster/baseline")] = view
    answers[("POST", "/cluster/baseline/raise")] = {**view, "added": ["avx"], "removed": []}
    out = segue("cluster", "baseline")
    assert "qemu64,+aes" in out and "raise-baseline" in out and "host2" in out
    assert json.loads(segue("cluster", "baseline", "--json"))["features"] == ["aes"]
    assert "added: avx" in segue("cluster", "raise-baseline")
