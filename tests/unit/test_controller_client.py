"""Where the CLI finds the controller, and how its errors come back."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from segue.controller.client import ControllerClient, resolve_url, split_url
from segue.domain.errors import NotFound, Unavailable


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
    assert split_url("unix:/run/c.sock") == ("http://controller", "/run/c.sock")
    assert split_url("https://c:7700") == ("https://c:7700", None)


def test_errors_come_back_with_their_code() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"kind": "not_found", "error": {
            "code": "VM_NOT_FOUND", "message": "no VM named x", "hint": "segue vm list"}})

    client = ControllerClient("http://c", transport=httpx.MockTransport(answer))
    with client, pytest.raises(NotFound) as caught:
        client.get_vm("x")
    assert caught.value.code == "VM_NOT_FOUND" and caught.value.hint == "segue vm list"


def test_unreachable_controller(home: Path) -> None:
    client = ControllerClient.from_env(f"unix:{home}/none.sock")
    with client, pytest.raises(Unavailable) as caught:
        client.list_hosts()
    assert caught.value.code == "CONTROLLER_UNREACHABLE" and "--url" in caught.value.hint
