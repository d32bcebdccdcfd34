"""`segue vm migrate`'s downtime options as they reach the controller: no --max-downtime
leaves the bound to the cluster; --max-downtime and --downtime-ms are the user's asking for
more (or less)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from segue.cli.main import app as cli
from segue.clients.controller import ControllerClient
from segue.domain.errors import Conflict
from segue.httpapi import STATUS_BY_KIND


@pytest.mark.parametrize(("args", "max_downtime", "downtime"), [
    ([], None, None),  # the cluster's bound (300 ms unless controller.toml says otherwise)
    (["--max-downtime", "1000"], 1000, None),
    (["--downtime-ms", "800"], None, 800),  # kept even above the bound
])
def test_the_downtime_options_sent(monkeypatch: pytest.MonkeyPatch, args: list[str],
                                   max_downtime: int | None, downtime: int | None) -> None:
    sent: list[dict[str, Any]] = []
    refusal = Conflict("MIGRATION_CHECKS_FAILED", "web1 cannot migrate", "see --check",
                       results=[])

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(STATUS_BY_KIND[refusal.kind],
                              json={"error": refusal.to_dict(), "kind": refusal.kind})

    monkeypatch.setattr(ControllerClient, "from_env", classmethod(
        lambda cls, url=None, token=None: cls("http://controller",
                                              transport=httpx.MockTransport(answer))))
    CliRunner().invoke(cli, ["vm", "migrate", "web1", "--to", "host2", *args])
    assert len(sent) == 1
    assert sent[0].get("max_downtime_ms") == max_downtime
    assert sent[0].get("downtime_limit_ms") == downtime


@pytest.mark.parametrize(("args", "tls"), [([], True), (["--no-tls"], False),
                                           (["--check"], True), (["--check", "--no-tls"], False)])
def test_tls_is_asked_for_unless_no_tls(monkeypatch: pytest.MonkeyPatch, args: list[str],
                                        tls: bool) -> None:
    """A migration (and its --check) is encrypted by default; --no-tls asks for plain."""
    sent: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(503, json={"error": {"code": "FAKE", "message": "no",
                                                   "hint": "", "field": None},
                                         "kind": "unavailable"})

    monkeypatch.setattr(ControllerClient, "from_env", classmethod(
        lambda cls, url=None, token=None: cls("http://controller",
                                              transport=httpx.MockTransport(answer))))
    CliRunner().invoke(cli, ["vm", "migrate", "web1", "--to", "host2", *args])
    assert len(sent) == 1 and sent[0]["tls"] is tls
