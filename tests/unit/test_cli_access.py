"""The CLI's side of access: where the token comes from, when it is sent, and the times and
durations ``segue events`` and ``segue token create`` take."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from segue.cli.main import app as cli
from segue.cli.times import parse_duration, parse_time
from segue.clients.base import Blocking
from segue.clients.controller import ControllerClient, resolve_token
from segue.domain.errors import InvalidRequest

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600),
                                               ("7d", 7 * 86400), ("2W", 14 * 86400)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text, "--ttl") == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0h", "1y", "h", "1.5h", "-1h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_duration(text, "--ttl")
    assert err.value.code == "CLI_DURATION_INVALID" and "--ttl" in err.value.message


def test_times_are_ago_or_iso_in_utc() -> None:
    assert parse_time("1h", "--since", NOW) == NOW - timedelta(hours=1)
    assert parse_time("2030-01-01T10:00", "--since", NOW) == datetime(2030, 1, 1, 10,
                                                                     tzinfo=UTC)
    assert parse_time("2030-01-01T10:00+02:00", "--since", NOW) == datetime(
        2030, 1, 1, 8, tzinfo=UTC)
    with pytest.raises(InvalidRequest) as err:
        parse_time("yesterday", "--since", NOW)
    assert err.value.code == "CLI_TIME_INVALID"


def test_the_token_comes_from_the_option_then_the_environment_then_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("SEGUE_TOKEN", raising=False)
    assert resolve_token(None) is None
    (tmp_path / "segue").mkdir()
    (tmp_path / "segue" / "token").write_text("from-file\n")
    assert resolve_token(None) == "from-file"
    monkeypatch.setenv("SEGUE_TOKEN", "from-env")
    assert resolve_token(None) == "from-env"
    assert resolve_token("given") == "given"


def sent_headers(url: str, token: str | None) -> httpx.Headers:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    with Blocking(ControllerClient(url, transport=httpx.MockTransport(answer),
                                   token=token)) as c:
        c.run(c.client.list_users())
    return seen[0].headers


def test_the_token_goes_over_tcp_only() -> None:
    assert sent_headers("http://c:7700", "segue_x")["authorization"] == "Bearer segue_x"
    assert "authorization" not in sent_headers("unix:/run/segue.sock", "segue_x")
    assert "authorization" not in sent_headers("http://c:7700", None)


def test_segue_token_option_reaches_every_command(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    monkeypatch.setattr(ControllerClient, "from_env", classmethod(
        lambda cls, url=None, token=None: cls("http://c", token=resolve_token(token),
                                              transport=httpx.MockTransport(answer))))
    monkeypatch.setenv("SEGUE_TOKEN", "from-env")
    result = CliRunner().invoke(cli, ["--token", "given", "events", "--actor", "alice",
                                      "--since", "1h", "--json"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["user", "list"])
    assert result.exit_code == 0, result.output
    assert [r.headers["authorization"] for r in seen] == ["Bearer given", "Bearer from-env"]
    assert seen[0].url.path == "/audit" and seen[0].url.params["actor"] == "alice"
    since = datetime.fromisoformat(seen[0].url.params["since"])
    assert timedelta(minutes=59) < datetime.now(UTC) - since < timedelta(minutes=61)
