"""HTTP client of a host agent (sync httpx; transport injectable for tests).

Every method returns the decoded JSON body. An error answer is raised again as the same
``SegueError`` kind and code the agent raised; a connection failure raises ``Unavailable``
with code ``AGENT_UNREACHABLE``.
"""

from __future__ import annotations

from typing import Any

import httpx

from segue.domain.errors import Unavailable, error_from_dict


def unreachable(where: str, err: Exception) -> Unavailable:
    return Unavailable("AGENT_UNREACHABLE", f"agent at {where} did not answer: {err}",
                       "check that the agent runs (segue lab status)")


def decode_response(resp: httpx.Response) -> Any:
    """The JSON body of a success; the agent's own error raised again for a failure."""
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
            raise unreachable(self.where, err) from err
        return decode_response(resp)

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

    # the migration calls, as in AsyncAgentClient
    def prepare_incoming(self, spec: dict[str, Any], migration_id: str,
                         capabilities: dict[str, bool] | None = None,
                         parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"spec": spec, "migration_id": migration_id,
                "capabilities": capabilities or {}, "parameters": parameters or {}}
        return dict(self._call("POST", "/migrations/incoming", json=body))

    def start_migration(self, name: str, uri: str, capabilities: dict[str, bool] | None = None,
                        parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"uri": uri, "capabilities": capabilities or {}, "parameters": parameters or {}}
        return dict(self._call("POST", f"/vms/{name}/migrate", json=body))

    def migration_status(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/vms/{name}/migration"))

    def cancel_migration(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/vms/{name}/migration/cancel"))

    def abort_incoming(self, name: str) -> None:
        self._call("POST", f"/vms/{name}/incoming/abort")

    def claim(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/vms/{name}/incoming/claim"))

    def release(self, name: str) -> None:
        self._call("POST", f"/vms/{name}/release")

    def resume_vm(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/vms/{name}/resume"))

    # the pre-migration check calls, as in AsyncAgentClient
    def vm_cpu(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/vms/{name}/cpu"))

    def open_probe_listener(self) -> dict[str, Any]:
        return dict(self._call("POST", "/migration-network/listen"))

    def probe_migration_path(self, address: str, port: int) -> dict[str, Any]:
        return dict(self._call("POST", "/migration-network/probe",
                               json={"address": address, "port": port}))


class AsyncAgentClient:
    """The async client the controller uses; same answers and errors as AgentClient.

    Migration calls (agent side of a live migration):
    - ``prepare_incoming(spec, migration_id, capabilities, parameters)`` on the destination:
      starts QEMU with ``-incoming defer`` and the same device model, plugs its taps,
      listens on the migration interface; returns ``{"uri": "tcp:IP:PORT", "pid": ...}``.
    - ``start_migration(name, uri, capabilities, parameters)`` on the source.
    - ``migration_status(name)``: QEMU's ``query-migrate`` plus the VM's run state.
    - ``cancel_migration(name)`` on the source; ``abort_incoming(name)`` on the destination
      (kills the incoming QEMU, forgets it; never touches a VM this host owns).
    - ``claim(name)`` on the destination once it runs: it now owns the VM.
    - ``release(name)`` on the source once the destination owns it: QEMU quits, the local
      definition goes (the datastore's copy now names the destination).

    Policy and post-copy calls: ``dirty_rate(name)`` on the source (``{"dirty_rate_mibs"}``,
    a 300 ms ``calc-dirty-rate``); ``set_migration_parameters(name, params)``,
    ``start_postcopy(name)``, ``pause_migration(name)``, ``resume_migration(name, uri)`` on
    the source; ``recover_incoming(name)`` on the destination (``{"uri"}`` to resume to).

    Pre-migration check calls:
    - ``vm_cpu(name)``: ``{"model": the -cpu value its QEMU runs with, "features": [...]}``,
      the enabled features QEMU expands that to (Conflict ``VM_NOT_RUNNING`` without QEMU).
    - ``open_probe_listener()`` on the destination: ``{"address", "port"}`` of a one-shot TCP
      listener on its migration address (closed after one connection or 10 s).
    - ``probe_migration_path(address, port)`` on the source: ``{"ok", "rtt_ms", "error",
      "source_address"}``, a TCP connect from its migration address (3 s timeout; an
      unreachable peer is ``ok: false``, not an error).
    - ``open_probe_listener(sink=True)`` on the destination and ``measure_throughput(address,
      port, seconds)`` on the source: ``{"ok", "bytes_per_s", "bytes", "seconds", "error"}``,
      the link's rate as the destination counted a short stream. All raise Unavailable
      (``MIGRATION_NIC_UNAVAILABLE``) when the host has no usable migration address.
    """

    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = 60.0) -> None:
        self.where = base_url
        self._http = httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise unreachable(self.where, err) from err
        return decode_response(resp)

    async def health(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/health"))

    async def facts(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/host"))

    async def list_vms(self) -> list[dict[str, Any]]:
        return list(await self._call("GET", "/vms"))

    async def define_vm(self, spec: dict[str, Any], start: bool = False) -> dict[str, Any]:
        return dict(await self._call("POST", "/vms", json=spec, params={"start": start}))

    async def get_vm(self, name: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/vms/{name}"))

    async def start_vm(self, name: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/vms/{name}/start"))

    async def stop_vm(self, name: str, timeout: float = 30.0,
                      force: bool = False) -> dict[str, Any]:
        return dict(await self._call("POST", f"/vms/{name}/stop",
                                     params={"timeout": timeout, "force": force}))

    async def destroy_vm(self, name: str) -> None:
        await self._call("DELETE", f"/vms/{name}")

    async def events(self, name: str, since: int = 0) -> list[dict[str, Any]]:
        return list(await self._call("GET", f"/vms/{name}/events", params={"since": since}))

    async def prepare_incoming(self, spec: dict[str, Any], migration_id: str,
                               capabilities: dict[str, bool] | None = None,
                               parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"spec": spec, "migration_id": migration_id,
                "capabilities": capabilities or {}, "parameters": parameters or {}}
        return dict(await self._call("POST", "/migrations/incoming", json=body))

    async def start_migration(self, name: str, uri: str,
                              capabilities: dict[str, bool] | None = None,
                              parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"uri": uri, "capabilities": capabilities or {}, "parameters": parameters or {}}
        return dict(await self._call("POST", f"/vms/{name}/migrate", json=body))

    async def migration_status(self, name: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/vms/{name}/migration"))

    async def cancel_migration(self, name: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/vms/{name}/migration/cancel"))

    async def abort_incoming(self, name: str) -> None:
        await self._call("POST", f"/vms/{name}/incoming/abort")

    async def claim(self, name: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/vms/{name}/incoming/claim"))

    async def release(self, name: str) -> None:
        await self._call("POST", f"/vms/{name}/release")

    async def files_visible(self, files: list[dict[str, str]]) -> list[dict[str, Any]]:
        """Which files (``{"datastore", "path"}``) this host sees: each with ``visible``."""
        body = await self._call("POST", "/datastores/files", json={"files": files})
        return list(body["files"])

    async def resume_vm(self, name: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/vms/{name}/resume"))

    async def vm_cpu(self, name: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/vms/{name}/cpu"))

    async def open_probe_listener(self, sink: bool = False) -> dict[str, Any]:
        return dict(await self._call("POST", "/migration-network/listen",
                                     params={"sink": "true"} if sink else None))

    async def measure_throughput(self, address: str, port: int,
                                 seconds: float = 0.3) -> dict[str, Any]:
        return dict(await self._call("POST", "/migration-network/throughput",
                                     json={"address": address, "port": port,
                                           "seconds": seconds}))

    async def probe_migration_path(self, address: str, port: int) -> dict[str, Any]:
        return dict(await self._call("POST", "/migration-network/probe",
                                     json={"address": address, "port": port}))

    async def dirty_rate(self, name: str, calc_time_ms: int = 300) -> dict[str, Any]:
        return dict(await self._call("POST", f"/vms/{name}/dirty-rate",
                                     params={"calc_time_ms": calc_time_ms}))

    async def set_migration_parameters(self, name: str,
                                       parameters: dict[str, Any]) -> dict[str, Any]:
        return dict(await self._call("POST", f"/vms/{name}/migration/parameters",
                                     json={"parameters": parameters}))

    async def start_postcopy(self, name: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/vms/{name}/migration/postcopy"))

    async def pause_migration(self, name: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/vms/{name}/migration/pause"))

    async def recover_incoming(self, name: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/migrations/incoming/{name}/recover"))

    async def resume_migration(self, name: str, uri: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/vms/{name}/migration/resume",
                                     json={"uri": uri}))
