"""Heartbeats: the agent tells the controller it is alive, what its host is, what VMs run.

With ``controller_url`` configured, ``run_heartbeats`` POSTs ``/hosts/heartbeat`` every
``heartbeat_interval`` seconds: ``{name, url, facts, vms: [{name, state, pid, uuid, spec}]}``.
A failed heartbeat is logged (the first one, then at most once a minute while failures go
on) and retried at the next interval; it never stops the agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from segue.agent.client import decode_response
from segue.agent.config import AgentConfig
from segue.agent.facts import host_facts
from segue.agent.vms import VMManager
from segue.controller.client import split_url

log = logging.getLogger(__name__)
FAILURE_LOG_INTERVAL = 60.0  # seconds between two logs of continuing failures
VM_FIELDS = ("name", "state", "pid", "uuid", "spec")


async def heartbeat_body(config: AgentConfig, manager: VMManager) -> dict[str, Any]:
    """What one heartbeat says: this host's facts now and its VMs' live states."""
    # pyroute2's sync netlink socket (migration NIC facts) cannot run in the loop's thread
    facts = await asyncio.to_thread(host_facts, config, manager.caps, len(manager.vms))
    vms = [info.model_dump(mode="json", include=set(VM_FIELDS))
           for info in await manager.list_all()]
    return {"name": config.host, "url": config.advertise_url, "facts": facts.to_dict(),
            "vms": vms}


async def send_heartbeat(http: httpx.AsyncClient, config: AgentConfig,
                         manager: VMManager) -> None:
    """Send one heartbeat; raises the controller's SegueError, or httpx.HTTPError."""
    resp = await http.post("/hosts/heartbeat", json=await heartbeat_body(config, manager))
    decode_response(resp)


def controller_http(url: str, transport: httpx.AsyncBaseTransport | None = None,
                    timeout: float = 10.0) -> httpx.AsyncClient:
    """An async HTTP client of the controller at ``url`` (``http(s)://`` or ``unix:PATH``)."""
    base_url, uds = split_url(url)
    if transport is None and uds is not None:
        transport = httpx.AsyncHTTPTransport(uds=uds)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout)


class FailureLog:
    """Logs the first failure, then at most one per ``interval`` s; logs the recovery."""

    def __init__(self, interval: float = FAILURE_LOG_INTERVAL) -> None:
        self.interval = interval
        self.failures = 0
        self._last_logged = float("-inf")

    def failed(self, err: Exception, now: float) -> None:
        self.failures += 1
        if now - self._last_logged >= self.interval:
            self._last_logged = now
            log.warning("heartbeat to the controller failed (%d in a row): %s: %s",
                        self.failures, type(err).__name__, err)

    def succeeded(self) -> None:
        if self.failures:
            log.info("heartbeats reach the controller again after %d failures", self.failures)
        self.failures, self._last_logged = 0, float("-inf")


async def run_heartbeats(config: AgentConfig, manager: VMManager,
                         transport: httpx.AsyncBaseTransport | None = None) -> None:
    """Send a heartbeat every ``config.heartbeat_interval`` s until cancelled."""
    if config.controller_url is None or config.advertise_url is None:
        log.error("heartbeats need controller_url and advertise_url; sending none")
        return
    failures = FailureLog()
    async with controller_http(config.controller_url, transport) as http:
        while True:
            try:
                await send_heartbeat(http, config, manager)
            except Exception as err:  # whatever went wrong, the agent keeps serving its VMs
                failures.failed(err, time.monotonic())
            else:
                failures.succeeded()
            await asyncio.sleep(config.heartbeat_interval)
