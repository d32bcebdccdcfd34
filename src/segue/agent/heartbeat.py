"""Heartbeats: the agent tells the controller it is alive, what its host is, what VMs run.

With ``controller_url`` configured, ``run_heartbeats`` POSTs ``/hosts/heartbeat`` every
``heartbeat_interval`` seconds through the controller's client
(``segue.clients.controller``): a ``segue.api.inventory.Heartbeat`` with this host's facts
and its VMs. A failed heartbeat is logged (the first one, then at most once a minute while
failures go on) and retried at the next interval; it never stops the agent. With the
agent's ``pki_dir`` it presents the host's certificate (the controller takes a host's
heartbeat only with it) and checks the controller's, loading a renewed one as it appears.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
from pydantic import TypeAdapter

from segue.agent.config import AgentConfig
from segue.agent.facts import host_facts
from segue.agent.vms import VMManager
from segue.api.inventory import Heartbeat, HeartbeatAnswer, HostFactsBody, VMReport
from segue.api.vm import VMInfo
from segue.clients.base import ClientTLS
from segue.clients.controller import ControllerClient

log = logging.getLogger(__name__)
FAILURE_LOG_INTERVAL = 60.0  # seconds between two logs of continuing failures
HEARTBEAT_TIMEOUT = 10.0  # seconds one heartbeat may take
_VM_INFO = TypeAdapter(VMInfo)


async def heartbeat_body(config: AgentConfig, manager: VMManager) -> Heartbeat:
    """What one heartbeat says: this host's facts now and its VMs' live states."""
    if config.advertise_url is None:
        raise ValueError("a heartbeat needs the agent's advertise_url")
    # pyroute2's sync netlink socket (migration NIC facts) cannot run in the loop's thread
    facts = await asyncio.to_thread(host_facts, config, manager.caps, len(manager.vms))
    vms = [VMReport.from_info(_VM_INFO.validate_python(info, from_attributes=True))
           for info in await manager.list_all()]
    return Heartbeat(name=config.host, url=config.advertise_url,
                     facts=HostFactsBody.from_domain(facts), vms=vms)


async def send_heartbeat(controller: ControllerClient, config: AgentConfig,
                         manager: VMManager) -> HeartbeatAnswer:
    """Send one heartbeat; raises the controller's SegueError (``Unavailable``
    ``CONTROLLER_UNREACHABLE`` when it does not answer)."""
    return await controller.heartbeat(await heartbeat_body(config, manager))


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
    creds = ClientTLS(config.pki_dir) if config.pki_dir is not None else None

    def client() -> ControllerClient:
        return ControllerClient(config.controller_url or "", transport=transport,
                                timeout=HEARTBEAT_TIMEOUT,
                                tls=creds.context if creds else None)

    controller = client()
    try:
        while True:
            if creds is not None and creds.refresh():  # a new trust: a new connection
                await controller.aclose()
                controller = client()
            try:
                await send_heartbeat(controller, config, manager)
            except Exception as err:  # whatever went wrong, the agent keeps serving its VMs
                failures.failed(err, time.monotonic())
            else:
                failures.succeeded()
            await asyncio.sleep(config.heartbeat_interval)
    finally:
        await controller.aclose()
