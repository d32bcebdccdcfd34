"""HTTP client of the controller (sync httpx), used by the CLI.

Where the controller is (``ControllerClient.from_env``): an explicit URL, else
``$SEGUE_URL``, else the lab controller's unix socket if it exists, else
``http://127.0.0.1:7700``. A URL ``unix:/path/to.sock`` means a unix socket.

Every method returns the decoded JSON body. An error answer is raised again as the
``SegueError`` the controller raised (same kind and code); a connection failure raises
``Unavailable`` with code ``CONTROLLER_UNREACHABLE``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from segue import paths
from segue.agent.client import decode_response
from segue.controller.config import CONTROLLER_PORT
from segue.domain.errors import Unavailable

DEFAULT_URL = f"http://127.0.0.1:{CONTROLLER_PORT}"
UNIX_PREFIX = "unix:"
UDS_BASE_URL = "http://controller"  # host part of requests sent over a unix socket


def lab_socket() -> Path:
    """Where the lab's controller listens on a unix socket."""
    return paths.lab_dir("segue") / "controller.sock"


def resolve_url(url: str | None) -> str:
    """The controller URL to use: ``url``, else $SEGUE_URL, else the lab socket, else
    the local default."""
    if url:
        return url
    if os.environ.get("SEGUE_URL"):
        return os.environ["SEGUE_URL"]
    if lab_socket().exists():
        return UNIX_PREFIX + str(lab_socket())
    return DEFAULT_URL


def split_url(url: str) -> tuple[str, str | None]:
    """``(base_url, unix_socket_path)`` of a controller URL (``unix:PATH`` or HTTP(S))."""
    if url.startswith(UNIX_PREFIX):
        return UDS_BASE_URL, url[len(UNIX_PREFIX):]
    return url, None


class ControllerClient:
    """Talks to the controller at ``url`` (``http(s)://...`` or ``unix:PATH``)."""

    def __init__(self, url: str, *, transport: httpx.BaseTransport | None = None,
                 timeout: float = 300.0) -> None:
        base_url, uds = split_url(url)
        if transport is None and uds is not None:
            transport = httpx.HTTPTransport(uds=uds)
        self.url = url
        self._http = httpx.Client(base_url=base_url, transport=transport, timeout=timeout)

    @classmethod
    def from_env(cls, url: str | None = None) -> ControllerClient:
        """A client of the controller found as ``resolve_url`` says."""
        return cls(resolve_url(url))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; the decoded body, or the controller's error raised again."""
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise Unavailable("CONTROLLER_UNREACHABLE",
                              f"the controller at {self.url} did not answer: {err}",
                              "start it (segue server --config FILE) or point --url or "
                              "$SEGUE_URL at it") from err
        return decode_response(resp)

    # ---- hosts ----
    def list_hosts(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/hosts"))

    def get_host(self, name: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/hosts/{name}"))

    def set_migration_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        action = "enable-migration" if enabled else "disable-migration"
        return dict(self.call("POST", f"/hosts/{name}/{action}"))

    # ---- VMs ----
    def list_vms(self, host: str | None = None) -> list[dict[str, Any]]:
        params = {"host": host} if host else {}
        return list(self.call("GET", "/vms", params=params))

    def create_vm(self, host: str, spec: dict[str, Any], start: bool = True) -> dict[str, Any]:
        return dict(self.call("POST", "/vms", json={"host": host, "spec": spec,
                                                    "start": start}))

    def get_vm(self, name: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/vms/{name}"))

    def start_vm(self, name: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/vms/{name}/start"))

    def stop_vm(self, name: str, force: bool = False, timeout: float = 30.0) -> dict[str, Any]:
        return dict(self.call("POST", f"/vms/{name}/stop",
                              params={"force": force, "timeout": timeout}))

    def destroy_vm(self, name: str) -> None:
        self.call("DELETE", f"/vms/{name}")

    def vm_events(self, name: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/vms/{name}/events"))
