"""`segue host maintenance enter|exit|status` with the controller's answers canned: the
pre-flight table, following the evacuation until the host is in-maintenance or stuck (exit
1 naming the blockers), --dry-run and --no-wait, and exit --return following the moves
back."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from segue.api.maintenance import MaintenanceStatus
from segue.cli import maintenance
from segue.cli.main import app as cli
from segue.clients.controller import ControllerClient

PLAN = {"host": "host1", "state": "entering-maintenance", "parallel": 2, "predicted_s": 12.5,
        "reason": "evacuating: 2 VM(s) to move; blocked: web1: MUST_RULE",
        "vms": [{"vm": "web2", "running": True, "dest": "host2", "predicted_s": 8.0},
                {"vm": "web3", "running": True, "dest": "host3", "predicted_s": 12.5},
                {"vm": "web1", "running": True, "blocker": "MUST_RULE",
                 "message": "web1 must stay on hosts tagged home"}]}


def status(state: str, evacuation: str, phases: dict[str, str],
           reason: str | None = None) -> dict[str, Any]:
    return {"host": "host1", "state": state, "evacuation": evacuation, "reason": reason,
            "vms": [{"vm": vm, "phase": p, "dest": "host2",
                     "blocker": "MUST_RULE" if p == "blocked" else None,
                     "message": "stays" if p == "blocked" else None}
                    for vm, p in phases.items()]}


RUNNING = status("entering-maintenance", "running",
                 {"web2": "migrating", "web3": "planned", "web1": "blocked"})
STUCK = status("entering-maintenance", "stuck",
               {"web2": "moved", "web3": "moved", "web1": "blocked"}, "web1: MUST_RULE")
DONE = status("in-maintenance", "done", {"web2": "moved", "web3": "moved"})


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> dict[Any, Any]:
    """(method, path) -> the answers, in turn (the last one repeats); ``sent``: requests."""
    canned: dict[Any, Any] = {"sent": []}

    def answer(request: httpx.Request) -> httpx.Response:
        canned["sent"].append((request.method, request.url.path,
                               json.loads(request.content) if request.content else None))
        queue = canned[(request.method, request.url.path)]
        return httpx.Response(200, json=queue.pop(0) if len(queue) > 1 else queue[0])

    monkeypatch.setattr(ControllerClient, "from_env", classmethod(
        lambda cls, url=None, token=None: cls("http://controller",
                                              transport=httpx.MockTransport(answer))))
    monkeypatch.setattr(maintenance, "FOLLOW_POLL_S", 0.0)
    return canned


def segue(*args: str, code: int = 0) -> str:
    out = CliRunner().invoke(cli, list(args))
    assert out.exit_code == code, out.output
    return out.output


ENTER = ("POST", "/hosts/host1/maintenance/enter")
STATUS = ("GET", "/hosts/host1/maintenance")


def test_dry_run_prints_the_plan_and_asks_nothing_else(answers: Any) -> None:
    answers[ENTER] = [{**PLAN, "state": "normal", "dry_run": True}]
    out = segue("host", "maintenance", "enter", "host1", "--dry-run", "--max-parallel", "3")
    for text in ("web2", "host2", "8.0s", "MUST_RULE", "total ETA 12.5s", "nothing changed"):
        assert text in out
    assert answers["sent"] == [("POST", ENTER[1], {"max_parallel": 3, "dry_run": True})]


def test_enter_follows_until_stuck_and_exits_non_zero_naming_the_blocker(
        answers: Any) -> None:
    answers[ENTER] = [PLAN]
    answers[STATUS] = [RUNNING, RUNNING, STUCK]
    out = segue("host", "maintenance", "enter", "host1", code=1)
    assert "web1: MUST_RULE" in out and "stays" in out
    assert [s[0:2] for s in answers["sent"]].count(STATUS) == 3


def test_enter_follows_until_in_maintenance(answers: Any) -> None:
    answers[ENTER] = [PLAN]
    answers[STATUS] = [RUNNING, DONE]
    out = segue("host", "maintenance", "enter", "host1")
    assert "host1 is in-maintenance" in out


def test_the_live_rows_show_each_copy_s_progress_and_the_eta() -> None:
    copying = {**RUNNING, "eta_s": 9.0, "vms": [
        {**RUNNING["vms"][0], "job_phase": "copying", "progress_pct": 43.2, "eta_s": 5.0},
        *RUNNING["vms"][1:]]}
    console = Console(width=200, record=True)
    console.print(maintenance.progress_table(MaintenanceStatus.model_validate(copying)))
    out = console.export_text()
    assert "43% (5s left)" in out and "ETA 9s" in out and "migrating (copying)" in out


def test_no_wait_returns_at_once(answers: Any) -> None:
    answers[ENTER] = [PLAN]
    out = segue("host", "maintenance", "enter", "host1", "--no-wait")
    assert "segue host maintenance status host1" in out
    assert [s[0:2] for s in answers["sent"]] == [ENTER]


def test_a_bad_max_parallel_is_refused_before_asking(answers: Any) -> None:
    out = segue("host", "maintenance", "enter", "host1", "--max-parallel", "0", code=2)
    assert "--max-parallel" in out and answers["sent"] == []


def test_status_and_exit(answers: Any) -> None:
    answers[STATUS] = [STUCK]
    out = segue("host", "maintenance", "status", "host1")
    assert "blocked" in out and "reason: web1: MUST_RULE" in out
    answers[("POST", "/hosts/host1/maintenance/exit")] = [{"host": "host1", "state": "normal"}]
    assert "host1 is normal" in segue("host", "maintenance", "exit", "host1")


EXIT = ("POST", "/hosts/host1/maintenance/exit")
RETURNING = {**status("normal", "running", {"web2": "migrating", "web3": "planned"}),
             "kind": "return"}


def test_exit_return_follows_the_moves_back(answers: Any) -> None:
    answers[EXIT] = [{"host": "host1", "state": "normal", "parallel": 1,
                      "vms": [{"vm": "web2", "running": True, "dest": "host1"},
                              {"vm": "web3", "running": True, "dest": "host1"}]}]
    answers[STATUS] = [RETURNING, {**status("normal", "done", {"web2": "moved",
                                                                "web3": "moved"}),
                                   "kind": "return"}]
    out = segue("host", "maintenance", "exit", "host1", "--return", "--max-parallel", "1")
    assert "bringing back: web2, web3" in out and "2 VM(s) back on host1" in out
    assert answers["sent"][0] == ("POST", EXIT[1], {"return": True, "max_parallel": 1})


def test_exit_return_exits_non_zero_naming_a_vm_that_did_not_come_back(
        answers: Any) -> None:
    answers[EXIT] = [{"host": "host1", "state": "normal",
                      "vms": [{"vm": "web2", "running": True, "dest": "host1"},
                              {"vm": "web1", "running": True, "dest": "host1"}]}]
    answers[STATUS] = [{**status("normal", "stuck", {"web2": "moved", "web1": "blocked"}),
                        "kind": "return"}]
    out = segue("host", "maintenance", "exit", "host1", "--return", code=1)
    assert "not every VM came back to host1" in out and "web1: MUST_RULE" in out


def test_exit_return_with_nothing_to_bring_back(answers: Any) -> None:
    answers[EXIT] = [{"host": "host1", "state": "normal", "vms": []}]
    out = segue("host", "maintenance", "exit", "host1", "--return")
    assert "no VM to bring back" in out
    assert [s[0:2] for s in answers["sent"]] == [EXIT]
