"""The host agent's HTTP API (FastAPI).

Routes: ``GET /health``, ``GET /host`` (facts), ``GET/POST /vms``, ``GET/DELETE /vms/{name}``,
``POST /vms/{name}/start``, ``POST /vms/{name}/stop``, ``GET /vms/{name}/events``,
``GET /vms/{name}/serial``; the migration routes (``segue.agent.api_migration``) and the
pre-migration check routes (``segue.agent.api_checks``). Stop and destroy take an optional
``generation`` query, the fencing token (``segue.agent.guards``); a start's is the lease
generation its claim expects. Every route takes and answers the wire models of
``segue.api`` (declared as its ``response_model``). Errors are ``{"error": {code, message,
hint}, "kind": ...}`` with the HTTP status mapped from the error's kind in
``segue.httpapi``, and only there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request

from segue import __version__
from segue.agent.api_params import (
    EventSeq,
    LeaseGeneration,
    SerialLines,
    StopTimeout,
    VMName,
)
from segue.agent.config import AgentConfig
from segue.agent.credentials import RENEWAL_CHECK_INTERVAL, run_renewals
from segue.agent.facts import QemuCapabilities, detect_accel, host_facts, probe_qemu
from segue.agent.heartbeat import run_heartbeats
from segue.agent.incoming import Incoming
from segue.agent.migpath import ProbeListeners
from segue.agent.outgoing import Outgoing
from segue.agent.peergate import ControllerOnly
from segue.agent.rehome import Rehoming
from segue.agent.vms import VMManager
from segue.api.agent import Health, SerialAnswer, VMEvent
from segue.api.vm import VMInfo, VMSpecBody
from segue.clients.base import ClientTLS
from segue.clients.controller import ControllerClient
from segue.domain.host import HostFacts
from segue.httpapi import install_error_handler

log = logging.getLogger(__name__)


def create_app(config: AgentConfig, caps: QemuCapabilities | None = None) -> FastAPI:
    """The agent app; probes QEMU at startup unless ``caps`` is given (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        accel, reason = detect_accel(config.accel)
        probed = caps or await probe_qemu(config.qemu_binary, accel, reason)
        log.info("host %s: accelerator %s (%s)", config.host, probed.accel, probed.accel_reason)
        manager = VMManager(config, probed)
        incoming = Incoming(manager)
        manager.hook = incoming  # before load: an adopted arrival is resumed by it
        app.state.incoming = incoming
        app.state.outgoing = Outgoing(manager)
        app.state.rehoming = Rehoming(manager)
        async with asyncio.TaskGroup() as tg:
            await manager.load(tg)
            app.state.manager = manager
            app.state.probe_listeners = probes = ProbeListeners(tg)
            beats = (tg.create_task(run_heartbeats(config, manager), name="heartbeats")
                     if config.controller_url is not None else None)
            renewals = _start_renewals(tg, config)
            try:
                yield
            finally:
                for task in (beats, renewals):
                    if task is not None:
                        task.cancel()
                probes.close()
                await manager.close()

    app = FastAPI(title=f"Segue agent ({config.host})", version=__version__, lifespan=lifespan)

    install_error_handler(app)
    app.add_middleware(ControllerOnly, pki_dir=config.pki_dir)
    _routes(app, config)
    return app


def _start_renewals(tg: asyncio.TaskGroup, config: AgentConfig) -> asyncio.Task[None] | None:
    """Renew this host's certificate before it expires (``agent.credentials``), when the
    agent has a credential directory and a controller."""
    pki_dir = config.pki_dir
    url = config.controller_url
    if pki_dir is None or url is None:
        return None

    def client() -> ControllerClient:
        # a new client per check: its TLS presents the current certificate (a renewed one)
        return ControllerClient(url, timeout=30.0, tls=ClientTLS(pki_dir).context)

    return tg.create_task(run_renewals(pki_dir, client, RENEWAL_CHECK_INTERVAL),
                          name="certificate-renewals")


def _manager(request: Request) -> VMManager:
    manager: VMManager = request.app.state.manager
    return manager


def _routes(app: FastAPI, config: AgentConfig) -> None:
    from segue.agent.api_checks import router as checks_router
    from segue.agent.api_migration import router as migration_router
    app.include_router(migration_router)
    app.include_router(checks_router)
    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(status="ok", host=config.host, version=__version__)

    @app.get("/host", response_model=HostFacts)
    def facts(request: Request) -> HostFacts:  # sync: FastAPI runs it in a thread
        m = _manager(request)
        return host_facts(config, m.caps, vms=len(m.vms))

    @app.get("/vms", response_model=list[VMInfo])
    async def list_vms(request: Request) -> list[VMInfo]:
        return await _manager(request).list_all()

    @app.post("/vms", status_code=201, response_model=VMInfo)
    async def define_vm(request: Request, spec: VMSpecBody, start: bool = False) -> VMInfo:
        """Define a VM; with ``start``, also start it, and if that fails, define nothing."""
        m = _manager(request)
        info = await m.define(spec.to_domain())
        if not start:
            return info
        try:
            return await m.start(spec.name)
        except BaseException:
            await asyncio.shield(m.destroy(spec.name))
            raise

    @app.get("/vms/{name}", response_model=VMInfo)
    async def show_vm(request: Request, name: VMName) -> VMInfo:
        return await _manager(request).info(name)

    @app.post("/vms/{name}/start", response_model=VMInfo)
    async def start_vm(request: Request, name: VMName,
                       generation: LeaseGeneration = None) -> VMInfo:
        """Start the VM; ``generation``: the lease generation the caller believes current
        (refused with ``VM_NOT_OWNED`` if the VM was claimed since)."""
        return await _manager(request).start(name, generation)

    @app.post("/vms/{name}/stop", response_model=VMInfo)
    async def stop_vm(request: Request, name: VMName, timeout: StopTimeout = 30.0,
                      force: bool = False, generation: LeaseGeneration = None) -> VMInfo:
        """Power the VM off; ``generation``: the lease generation the caller believes this
        host holds it at (refused with ``VM_NOT_OWNED`` otherwise)."""
        return await _manager(request).stop(name, timeout=timeout, force=force,
                                            generation=generation)

    @app.delete("/vms/{name}", status_code=204, response_model=None)
    async def destroy_vm(request: Request, name: VMName,
                         generation: LeaseGeneration = None) -> None:
        """Power off and undefine; ``generation`` as for stop (a stopped VM is held at
        none: pass none for it)."""
        await _manager(request).destroy(name, generation=generation)

    @app.get("/vms/{name}/events", response_model=list[VMEvent])
    async def vm_events(request: Request, name: VMName, since: EventSeq = 0) -> list[VMEvent]:
        return _manager(request).events(name, since)

    @app.get("/vms/{name}/serial", response_model=SerialAnswer)
    async def vm_serial(request: Request, name: VMName, lines: SerialLines = 50
                        ) -> SerialAnswer:
        """The tail of the VM's console log: its runtime dir's, never a file a spec names."""
        log_file = _manager(request).get(name).runtime.serial_log
        return SerialAnswer(name=name, lines=tail_lines(log_file, lines))


def tail_lines(path: Path, lines: int, max_bytes: int = 256 * 1024) -> list[str]:
    """The last ``lines`` lines of a (possibly large) text file; [] if it does not exist."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return []
    text = data.decode(errors="replace").replace("\r", "")
    return [line for line in text.splitlines() if line][-lines:]
