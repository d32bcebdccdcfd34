"""The agent side of a live migration, QEMU to QEMU: what each host does when told to.

The controller drives both agents (``segue.agent.client.AsyncAgentClient``):

- destination: ``prepare_incoming`` starts QEMU with the same argv plus ``-incoming defer``,
  plugs its taps, sets the capabilities and parameters (with a 1 ms announce delay, so the
  VM's MACs are announced by RARP right at completion), and listens on this host's migration
  interface (port chosen by the kernel, read back from ``query-migrate``). When the migration
  completes, the VM manager resumes the guest at once (``segue.agent.vms``). ``claim`` makes
  this host the owner; ``abort_incoming`` kills the incoming QEMU and forgets it.
- source: ``start`` sets capabilities (always with ``events``) and parameters and runs
  ``migrate``; ``cancel`` runs ``migrate_cancel`` (QEMU keeps the VM running); ``release``
  quits the QEMU once the destination has claimed the VM; ``resume`` runs a ``postmigrate``
  VM again, for a rollback after a completed migration whose destination then failed.
- policy and post-copy: ``dirty_rate`` samples the guest (``calc-dirty-rate``) before a
  start; ``set_parameters`` mid-flight; ``start_postcopy``; ``pause`` (either side);
  ``recover_incoming`` (destination: ``migrate-recover`` on a fresh port) and
  ``resume_migration`` (source: ``migrate`` with ``resume``) recover a paused post-copy.

The datastore's vm.json changes only in ``claim``; local definitions (runtime dirs) go in
``abort_incoming`` and ``release``.

Errors: ``NotFound`` (``VM_NOT_FOUND``); ``Conflict`` (``VM_EXISTS``, ``MAC_IN_USE``,
``VM_NOT_RUNNING``, ``VM_INCOMING``, ``VM_NOT_INCOMING``, ``MIGRATION_IN_PROGRESS``,
``VM_NOT_MIGRATED``, ``VM_NOT_PAUSED``); ``InvalidRequest`` (``VM_SPEC_INVALID``,
``MIGRATION_URI_INVALID``); ``Unavailable`` (``MIGRATION_NIC_UNAVAILABLE``,
``MIGRATION_LISTEN_FAILED``, ``DIRTY_RATE_UNAVAILABLE``, and QEMU's own
``QEMU_LAUNCH_FAILED``, ``QMP_COMMAND_FAILED``, ``QMP_UNAVAILABLE``); the admission errors.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import socket
import time
from dataclasses import replace
from typing import Any

from segue.agent import admission
from segue.agent.config import AgentConfig
from segue.agent.facts import migration_nic_facts
from segue.agent.roles import migration_active
from segue.agent.vms import ManagedVM, VMManager
from segue.agent.vmstore import VM_FILE
from segue.domain.errors import Conflict, InvalidRequest, SegueError, Unavailable
from segue.domain.vm import VMSpec, VMState, validate_vm_spec
from segue.files import write_json_atomic
from segue.qemu import process
from segue.qemu.argv import RuntimePaths
from segue.qemu.qmp import QMPCommandFailed, QMPSession

log = logging.getLogger(__name__)

# QEMU waits announce-initial ms (default 50; 7.2 accepts 0..100000) after the incoming
# migration completed before its first RARP: 1 ms lets the network learn the new port at once.
ANNOUNCE_PARAMETERS: dict[str, Any] = {"announce-initial": 1}
TCP_URI_RE = re.compile(r"tcp:(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]|[\w.-]+):(\d{1,5})")
CANCEL_TIMEOUT_S = 10.0
QUIT_TIMEOUT_S = 10.0
DIRTY_RATE_GRACE_S = 5.0
DIRTY_RATE_SAMPLE_MS = 300  # long enough to see a busy guest, short enough to hide in prepare
# pages sampled per GiB: QEMU's most (its default, 512, read the demo's guest rewriting
# 8 MiB/s of a 16 MiB hot set as 0 MiB/s over 300 ms)
DIRTY_RATE_SAMPLE_PAGES = 4096


def free_port(address: str) -> int:
    """A TCP port free on ``address`` now (the kernel's pick; QEMU binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


async def migration_address(config: AgentConfig) -> str:
    """The first IPv4 address of this host's migration interface.

    Raises Unavailable (``MIGRATION_NIC_UNAVAILABLE``) if it is missing, down or has none."""
    # pyroute2's sync netlink socket cannot run inside the event loop's thread
    nic = await asyncio.to_thread(migration_nic_facts, config.migration_interface)
    v4 = [a for a in nic.addresses if ipaddress.ip_address(a).version == 4]
    if not (nic.present and nic.up and v4):
        raise Unavailable(
            "MIGRATION_NIC_UNAVAILABLE",
            f"{config.host}: migration interface {config.migration_interface} is missing, down "
            "or has no IPv4 address",
            "set migration_interface in the agent configuration to an up interface with IPv4",
        )
    return v4[0]


def check_tcp_uri(uri: str) -> None:
    """Only ``tcp:HOST:PORT`` is accepted (``exec:`` would run a shell command as root)."""
    if not TCP_URI_RE.fullmatch(uri):
        raise InvalidRequest("MIGRATION_URI_INVALID", f"{uri!r} is not tcp:HOST:PORT",
                             "pass the uri the destination's prepare_incoming returned")


async def set_capabilities(qmp: QMPSession, capabilities: dict[str, bool]) -> None:
    """``migrate-set-capabilities`` with ``events`` always on (MIGRATION events recorded)."""
    caps = {**capabilities, "events": True}
    await qmp.execute("migrate-set-capabilities", {
        "capabilities": [{"capability": k, "state": bool(v)} for k, v in caps.items()]})


def conflict_state(vm: ManagedVM, code: str, wanted: str, hint: str) -> Conflict:
    return Conflict(code, f"{vm.spec.name} is {vm.state.value}, not {wanted}", hint,
                    state=vm.state.value)


class Migrations:
    """Migration operations on the VMs of one host's ``VMManager`` (see the module doc)."""

    def __init__(self, manager: VMManager) -> None:
        self.m = manager

    # ---- destination ----
    async def prepare_incoming(self, spec: VMSpec, migration_id: str,
                               capabilities: dict[str, bool],
                               parameters: dict[str, Any]) -> dict[str, Any]:
        """Check the host like a start does, launch the incoming QEMU and listen.

        Returns ``{"uri": "tcp:IP:PORT", "pid", "state": "inmigrate", "migration_id",
        "announce": {announce-* parameters as QEMU reports them}}``. On any failure the
        QEMU is killed and the local definition removed before the error is raised."""
        address = await migration_address(self.m.config)
        self._check_incoming(spec)
        vm = ManagedVM(spec=spec, runtime=RuntimePaths(self.m.store.runtime_dir(spec.name)),
                       incoming=migration_id)
        self.m.vms[spec.name] = vm  # no await since the checks: the name is taken atomically
        try:
            async with vm.lock:
                write_json_atomic(vm.runtime.directory / "spec.json", spec.to_dict())
                write_json_atomic(vm.runtime.role_file,
                                  {"role": "incoming", "migration_id": migration_id})
                await self.m.launch(vm, incoming="defer")
                answer = await self._listen(vm, address, capabilities, parameters)
        except BaseException:
            await asyncio.shield(self._discard(vm, "incoming migration not prepared"))
            raise
        log.info("%s: incoming migration %s on %s", spec.name, migration_id, answer["uri"])
        return answer

    def _check_incoming(self, spec: VMSpec) -> None:
        """The admission checks of define + start, for a VM that exists elsewhere already:
        its own datastore entry (naming the source) is expected and not a clash."""
        validate_vm_spec(spec)
        if not spec.uuid:
            raise InvalidRequest("VM_SPEC_INVALID", "uuid: an incoming VM needs its uuid",
                                 "send the source's spec unchanged", field="uuid")
        stale = self.m.vms.get(spec.name)
        if stale is not None and stale.incoming is not None and stale.pid is None:
            self.m.forget(stale)  # a destination whose QEMU died: nothing of it is left
        paths = self.m.file_paths(spec)
        view = self.m.host_view(list(paths.values()))
        others = {n: e for n, e in view.datastore_vms.items() if n != spec.name}
        admission.check_unique(spec, replace(view, datastore_vms=others))
        admission.check_references(spec, view, paths)
        admission.resolve_machine(spec, view)
        admission.check_cpu(spec, view)
        admission.check_fits(spec, view, starting=True)

    async def _listen(self, vm: ManagedVM, address: str, capabilities: dict[str, bool],
                      parameters: dict[str, Any]) -> dict[str, Any]:
        assert vm.qmp is not None and vm.pid is not None  # launched
        await set_capabilities(vm.qmp, capabilities)
        await vm.qmp.execute("migrate-set-parameters", {**ANNOUNCE_PARAMETERS, **parameters})
        await vm.qmp.execute("migrate-incoming", {"uri": f"tcp:{address}:0"})
        listening = await vm.qmp.execute("query-migrate")
        port = (listening.get("socket-address") or [{}])[0].get("port")
        if port is None:
            raise Unavailable("MIGRATION_LISTEN_FAILED",
                              f"{vm.spec.name}: QEMU listens on no port ({listening})",
                              "see the VM's qemu.log")
        params = await vm.qmp.execute("query-migrate-parameters")
        await self.m.refresh_state(vm)
        return {"uri": f"tcp:{address}:{port}", "pid": vm.pid, "state": vm.state.value,
                "migration_id": vm.incoming,
                "announce": {k: v for k, v in params.items() if k.startswith("announce-")}}

    async def abort_incoming(self, name: str) -> None:
        """Kill the incoming QEMU and forget the VM here; the datastore is not touched.

        Raises Conflict (``VM_NOT_INCOMING``) for a VM this host owns: it is never killed."""
        vm = self.m.get(name)
        async with vm.lock:
            self._require_incoming(vm)
            await self._discard(vm, "incoming migration aborted")
        log.info("%s: incoming migration %s aborted", name, vm.incoming)

    async def _discard(self, vm: ManagedVM, reason: str) -> None:
        await self.m.kill(vm, reason=reason)
        self.m.forget(vm)

    async def claim(self, name: str) -> dict[str, Any]:
        """The incoming VM runs here: write the datastore's vm.json naming this host and
        clear the incoming role. Raises Conflict unless it is incoming and running."""
        vm = self.m.get(name)
        async with vm.lock:
            self._require_incoming(vm)
            await self.m.refresh_state(vm)
            if vm.state != VMState.RUNNING:
                raise conflict_state(vm, "VM_NOT_RUNNING", "running",
                                     "claim it once the migration completed and it runs")
            root = self.m.config.datastores[vm.spec.datastore]
            write_json_atomic(root / vm.spec.name / VM_FILE,
                              {"host": self.m.config.host, "spec": vm.spec.to_dict()})
            vm.runtime.role_file.unlink(missing_ok=True)
            log.info("%s: claimed (migration %s)", name, vm.incoming)
            vm.incoming = None
        return await self.m.info(name)

    @staticmethod
    def _require_incoming(vm: ManagedVM) -> None:
        if vm.incoming is None:
            raise Conflict("VM_NOT_INCOMING",
                           f"{vm.spec.name} is owned by this host, not an incoming migration",
                           "abort the incoming side only on the migration's destination")

    # ---- source ----
    async def start(self, name: str, uri: str, capabilities: dict[str, bool],
                    parameters: dict[str, Any]) -> dict[str, Any]:
        """Migrate the running VM to ``uri``; returns QEMU's ``query-migrate`` answer."""
        check_tcp_uri(uri)
        vm = self.m.get(name)
        async with vm.lock:
            qmp = await self._running_qmp(vm)
            if migration_active(await self.m.migration_info(vm)):
                raise Conflict("MIGRATION_IN_PROGRESS", f"{name} is migrating already",
                               "wait for it, or cancel it")
            await set_capabilities(qmp, capabilities)
            if parameters:
                await qmp.execute("migrate-set-parameters", parameters)
            await qmp.execute("migrate", {"uri": uri})
            log.info("%s: migrating to %s", name, uri)
            return await self.m.migration_info(vm)

    async def _running_qmp(self, vm: ManagedVM) -> QMPSession:
        self._require_owned(vm)
        await self.m.refresh_state(vm)
        if vm.qmp is None or vm.state != VMState.RUNNING:
            raise conflict_state(vm, "VM_NOT_RUNNING", "running", "start it first")
        return vm.qmp

    @staticmethod
    def _require_owned(vm: ManagedVM) -> None:
        if vm.incoming is not None:
            raise Conflict("VM_INCOMING",
                           f"{vm.spec.name} is the destination of migration {vm.incoming}",
                           "act on the source host, or abort the incoming side")

    async def status(self, name: str) -> dict[str, Any]:
        """``{"name", "role", "state", "migration_id", "migration": query-migrate}``."""
        info, migration = await self.m.info_and_migration(name)
        return {"name": name, "role": info["role"], "state": info["state"],
                "migration_id": info["migration_id"], "migration": migration}

    async def cancel(self, name: str) -> dict[str, Any]:
        """``migrate_cancel``, then wait (up to 10 s) until QEMU's migration ended; the
        status. Cancelling when nothing migrates changes nothing."""
        vm = self.m.get(name)
        async with vm.lock:
            self._require_owned(vm)
            if vm.qmp is None:
                raise conflict_state(vm, "VM_NOT_RUNNING", "running", "nothing to cancel")
            await vm.qmp.execute("migrate_cancel")
            deadline = time.monotonic() + CANCEL_TIMEOUT_S
            while time.monotonic() < deadline:  # the watcher consumes the MIGRATION events
                if not migration_active(await self.m.migration_info(vm)):
                    break
                await asyncio.sleep(0.02)
        log.info("%s: migration cancelled", name)
        return await self.status(name)

    async def dirty_rate(self, name: str, calc_time_ms: int = DIRTY_RATE_SAMPLE_MS
                         ) -> dict[str, Any]:
        """Sample the running guest's dirty rate (``calc-dirty-rate``, then
        ``query-dirty-rate`` until measured) over ``calc_time_ms``: ``{"dirty_rate_mibs":
        MiB/s, "calc_time_ms"}``. A QEMU before 8.2 measures whole seconds only: it samples
        the ``calc_time_ms`` rounded up to seconds. Raises Conflict (``VM_NOT_RUNNING``),
        Unavailable (``DIRTY_RATE_UNAVAILABLE``)."""
        vm = self.m.get(name)
        async with vm.lock:
            qmp = await self._running_qmp(vm)
            try:
                await qmp.execute("calc-dirty-rate", {
                    "calc-time": calc_time_ms, "calc-time-unit": "millisecond",
                    "sample-pages": DIRTY_RATE_SAMPLE_PAGES})
                took_ms = calc_time_ms
            except QMPCommandFailed:  # no calc-time-unit before QEMU 8.2
                took_ms = 1000 * max(1, math.ceil(calc_time_ms / 1000))
                await qmp.execute("calc-dirty-rate", {"calc-time": took_ms // 1000,
                                                      "sample-pages": DIRTY_RATE_SAMPLE_PAGES})
            deadline = time.monotonic() + took_ms / 1000 + DIRTY_RATE_GRACE_S
            while time.monotonic() < deadline:
                await asyncio.sleep(min(0.1, took_ms / 4000))
                answer = await qmp.execute("query-dirty-rate")
                if answer.get("status") == "measured":
                    return {"dirty_rate_mibs": float(answer.get("dirty-rate") or 0),
                            "calc_time_ms": took_ms}
        raise Unavailable("DIRTY_RATE_UNAVAILABLE", f"{name}: QEMU measured no dirty rate "
                          f"within {took_ms / 1000 + DIRTY_RATE_GRACE_S:.0f} s",
                          "the migration can start without a prediction")

    async def set_parameters(self, name: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """``migrate-set-parameters`` now (QEMU applies them mid-flight); the parameters
        QEMU then reports. Raises Conflict (``VM_INCOMING``, ``VM_NOT_RUNNING``)."""
        qmp = self._source_qmp(self.m.get(name))
        await qmp.execute("migrate-set-parameters", parameters)
        return dict(await qmp.execute("query-migrate-parameters"))

    async def start_postcopy(self, name: str) -> dict[str, Any]:
        """``migrate-start-postcopy``: the source stops after this pass and the destination
        runs the guest, fetching the pages it lacks; the status."""
        await self._source_qmp(self.m.get(name)).execute("migrate-start-postcopy")
        log.info("%s: switching to post-copy", name)
        return await self.status(name)

    async def pause(self, name: str) -> dict[str, Any]:
        """``migrate-pause`` (either side): a post-copy whose stream hangs goes
        ``postcopy-paused`` so it can be recovered; the status."""
        vm = self.m.get(name)
        if vm.qmp is None:
            raise conflict_state(vm, "VM_NOT_RUNNING", "running", "nothing to pause")
        await vm.qmp.execute("migrate-pause", oob=True)  # the main thread may be blocked
        return await self.status(name)

    async def recover_incoming(self, name: str) -> dict[str, Any]:
        """Destination of a paused post-copy: ``migrate-recover`` listening on a fresh port
        of this host's migration address; ``{"uri"}`` for the source's resume.
        Raises Conflict (``VM_NOT_INCOMING``), Unavailable (``MIGRATION_NIC_UNAVAILABLE``)."""
        vm = self.m.get(name)
        self._require_incoming(vm)
        if vm.qmp is None:
            raise conflict_state(vm, "VM_NOT_RUNNING", "running", "its QEMU is gone")
        address = await migration_address(self.m.config)
        uri = f"tcp:{address}:{free_port(address)}"
        await vm.qmp.execute("migrate-recover", {"uri": uri}, oob=True)
        log.info("%s: post-copy recovery listens on %s", name, uri)
        return {"uri": uri}

    async def resume_migration(self, name: str, uri: str) -> dict[str, Any]:
        """Source of a paused post-copy: ``migrate`` with ``resume: true`` to the uri the
        destination's ``recover_incoming`` returned; the status."""
        check_tcp_uri(uri)
        await self._source_qmp(self.m.get(name)).execute("migrate",
                                                         {"uri": uri, "resume": True})
        log.info("%s: post-copy resumed to %s", name, uri)
        return await self.status(name)

    def _source_qmp(self, vm: ManagedVM) -> QMPSession:
        self._require_owned(vm)
        if vm.qmp is None:
            raise conflict_state(vm, "VM_NOT_RUNNING", "running", "its QEMU is gone")
        return vm.qmp

    async def release(self, name: str) -> None:
        """Quit the migrated-away QEMU (kill it if it does not quit) and remove the local
        definition; the datastore's vm.json names the destination now and stays.

        Raises Conflict (``VM_NOT_MIGRATED``) unless QEMU's status is ``postmigrate``."""
        vm = self.m.get(name)
        async with vm.lock:
            self._require_owned(vm)
            await self.m.refresh_state(vm)
            if vm.qmp is None or vm.pid is None or vm.state != VMState.POSTMIGRATE:
                raise conflict_state(vm, "VM_NOT_MIGRATED", "postmigrate",
                                     "release a VM only after its migration completed and "
                                     "the destination claimed it")
            try:
                await vm.qmp.execute("quit")
            except SegueError as err:
                log.warning("%s: quit failed (%s); killing it", name, err)
            await process.wait_exit(vm.pid, QUIT_TIMEOUT_S)
            await self.m.kill(vm, reason="migrated away")
            self.m.forget(vm)
        log.info("%s: released", name)

    async def resume(self, name: str) -> dict[str, Any]:
        """Run a paused or ``postmigrate`` VM again (``cont``): the rollback of a completed
        migration whose destination failed. Only safe once the destination's QEMU is gone
        (both would write the same disks). Raises Conflict (``VM_NOT_PAUSED``,
        ``MIGRATION_IN_PROGRESS``)."""
        vm = self.m.get(name)
        async with vm.lock:
            self._require_owned(vm)
            await self.m.refresh_state(vm)
            if vm.qmp is None or vm.state not in (VMState.PAUSED, VMState.POSTMIGRATE):
                raise conflict_state(vm, "VM_NOT_PAUSED", "paused or postmigrate",
                                     "only a paused or migrated-away VM can be resumed")
            if migration_active(await self.m.migration_info(vm)):
                raise Conflict("MIGRATION_IN_PROGRESS", f"{name} is migrating",
                               "cancel the migration first")
            await vm.qmp.execute("cont")
            log.info("%s: resumed on its source", name)
        return await self.m.info(name)

