"""HTTP client of a host agent (sync httpx; transport injectable for tests).

Every method returns the decoded JSON body. An error answer is raised again as the same
``SegueError`` kind and code the agent raised; a connection failure raises ``Unavailable``
with code ``AGENT_UNREACHABLE``.
"""

from __future__ import annotations

from typing import Any

import httpx

from segue.domain.errors import Unavailable, error_from_dict


class AgentClient:
    """Talks to one agent at ``base_url``, or over its unix socket ``uds``."""

    def __init__(self, base_url: str = "http://agent", *, uds: str | None = None,
                 transport: httpx.BaseTransport | None = None, timeout: float = 120.0) -> None:
        if transport is None and uds is not None:
            transport = httpx.HTTPTransport(uds=uds)
        self.where = uds or base_url
        self._http = httpx.Client(base_url=base_url, transport=transport, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise Unavailable("AGENT_UNREACHABLE", f"agent at {self.where} did not answer: {err}",
                              "check that the agent runs (segue lab status)") from err
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {}
            if isinstance(body, dict) and "error" in body:
                raise error_from_dict(str(body.get("kind")), body["error"])
            raise Unavailable("AGENT_ERROR", f"agent answered {resp.status_code}: {resp.text}",
                              "see the agent log")
        return resp.json() if resp.content else None

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/health"))

    def facts(self) -> dict[str, Any]:
        return dict(self._call("GET", "/host"))

    def list_vms(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/vms"))

    def define_vm(self, spec: dict[str, Any], start: bool = False) -> dict[str, Any]:
        return dict(self._call("POST", "/vms", json=spec, params={"start": start}))

    def get_vm(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/vms/{name}"))

    def start_vm(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/vms/{name}/start"))

    def stop_vm(self, name: str, timeout: float = 30.0, force: bool = False) -> dict[str, Any]:
        return dict(self._call("POST", f"/vms/{name}/stop",
                               params={"timeout": timeout, "force": force}))

    def destroy_vm(self, name: str) -> None:
        self._call("DELETE", f"/vms/{name}")

    def events(self, name: str, since: int = 0) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/vms/{name}/events", params={"since": since}))

    def serial(self, name: str, lines: int = 50) -> list[str]:
        return list(self._call("GET", f"/vms/{name}/serial", params={"lines": lines})["lines"])
