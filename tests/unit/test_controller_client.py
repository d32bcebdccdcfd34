"""Where the CLI finds the controller, and how its errors come back."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from segue.clients.base import Blocking, split_url
from segue.clients.controller import ControllerClient, resolve_url
from segue.domain.errors import InvalidRequest, NotFound, Unavailable


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEGUE_HOME", str(tmp_path))
    monkeypatch.delenv("SEGUE_URL", raising=False)
    return tmp_path


def test_explicit_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGUE_URL", "http://env:1")
    assert resolve_url("http://given:2") == "http://given:2"
    assert resolve_url(None) == "http://env:1"


def test_lab_socket_then_default(home: Path) -> None:
    assert resolve_url(None) == "http://127.0.0.1:7700"
    sock = home / "lab" / "segue" / "controller.sock"
    sock.parent.mkdir(parents=True)
    sock.touch()
    assert resolve_url(None) == f"unix:{sock}"


def test_split_url() -> None:
    assert split_url("unix:/run/c.sock", "controller") == ("http://controller", "/run/c.sock")
    assert split_url("https://c:7700", "controller") == ("https://c:7700", None)


def canned(status: int, body: object) -> Blocking[ControllerClient]:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    return Blocking(ControllerClient("http://c", transport=httpx.MockTransport(answer)))


def test_errors_come_back_with_their_code() -> None:
    with canned(404, {"kind": "not_found", "error": {
            "code": "VM_NOT_FOUND", "message": "no VM named x", "hint": "segue vm list"}}) as c, \
            pytest.raises(NotFound) as caught:
        c.run(c.client.get_vm("x"))
    assert caught.value.code == "VM_NOT_FOUND" and caught.value.hint == "segue vm list"


def test_refused_requests_come_back_with_their_field() -> None:
    with canned(400, {"kind": "invalid", "error": {
            "code": "REQUEST_INVALID", "message": "timeout: too small", "hint": "fix it",
            "field": "timeout"}}) as c, pytest.raises(InvalidRequest) as caught:
        c.run(c.client.stop_vm("x", timeout=-1))
    assert caught.value.code == "REQUEST_INVALID"
    assert caught.value.details["field"] == "timeout"


def test_an_answer_that_is_no_segue_error_is_the_controllers() -> None:
    """A proxy's page or a crash is the controller's failure, never an agent's."""
    with canned(502, {"detail": "bad gateway"}) as c, pytest.raises(Unavailable) as caught:
        c.run(c.client.list_hosts())
    assert caught.value.code == "CONTROLLER_ERROR"


def test_unreachable_controller(home: Path) -> None:
    with Blocking(ControllerClient.from_env(f"unix:{home}/none.sock")) as c, \
            pytest.raises(Unavailable) as caught:
        c.run(c.client.list_hosts())
    assert caught.value.code == "CONTROLLER_UNREACHABLE" and "--url" in caught.value.hint
