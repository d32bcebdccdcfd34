"""The destination side of a live migration, all of it: what this host does to receive a VM.

- ``prepare``: check the host as a start does, start QEMU with the same argv plus
  ``-incoming defer``, plug its taps, set the capabilities and parameters (with a 1 ms
  announce delay, so the VM's MACs are announced by RARP right at completion), with
  ``tls_peer`` set up TLS admitting that host alone (``segue.agent.migtls``), and listen
  on this host's migration interface (port chosen by the kernel, read back from QEMU).
  The VM is ``incoming`` here (a role file in its runtime dir says so across agent
  restarts) until it is claimed.
- as the migration arrives (``event``, called by the VM manager's watcher for every QEMU
  event): ``completed`` resumes the guest at once (its QEMU runs with ``-S``); in post-copy,
  the guest runs as soon as its device state is in. ``adopted``: an arrival found after an
  agent restart, completed while no agent was there, is resumed too.
- the lease: before the guest runs here (at completion, or once post-copy's device state
  is in), this host takes the VM's lease over from the source, which handed it over for this
  migration (``segue.agent.leases``); without it the guest stays paused. The VM's lease
  guardian (``segue.agent.guardians``) is started by the guardians' keeper, nudged right
  after the guest resumes: spawning it takes some 30 ms, which neither the switchover's
  blackout nor this watcher (recording the VM's events) should wait for, while this agent,
  there and holding the lease, renews it meanwhile. An incoming QEMU that is torn down gives
  the lease back (the source may then run the VM again).
- ``claim``: the VM runs here; this host becomes its owner (the datastore's vm.json names it).
- ``abort``: kill the incoming QEMU and forget the VM (the datastore is not touched).
- ``recover``: a paused post-copy listens again (``migrate-recover``) on a fresh port.

Operations are guarded (``segue.agent.guards``). None takes a generation (the fencing token
of the source's calls): the destination holds no lease until it takes the VM over, and it
can take it over only through the handover the source wrote for this host and this
migration id, at the generation the source's ``migrate`` was checked against; the
generation it then holds (one above) is the lease's to give, not the caller's to know. So
the migration id fences the takeover, ``claim`` acts only on a VM that runs here (it took
the VM over), and ``abort`` never on one that runs. Errors: ``NotFound`` (``VM_NOT_FOUND``);
``Conflict`` (``VM_EXISTS``, ``MAC_IN_USE``, ``VM_NOT_INCOMING``, ``VM_NOT_RUNNING``);
``InvalidRequest`` (``VM_SPEC_INVALID``, ``MIGRATION_ID_INVALID``); ``Unavailable``
(``MIGRATION_TLS_UNAVAILABLE``, ``MIGRATION_NIC_UNAVAILABLE``,
``MIGRATION_LISTEN_FAILED``, QEMU's ``QEMU_LAUNCH_FAILED``, ``QMP_COMMAND_FAILED``,
``QMP_UNAVAILABLE``); the admission errors of ``segue.agent.admission`` and the confinement
errors of ``segue.agent.confine`` (``PATH_OUTSIDE_DATASTORE``, ``PATH_RESERVED``): a
spec that comes with a migration is checked as a new one is (its ``serial_log`` is ignored).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from dataclasses import replace

from segue.agent import admission, confine, migtls
from segue.agent.guards import ANY_STATE, INCOMING, LIVE, qmp_of, requires
from segue.agent.managed import ManagedVM
from segue.agent.migpath import migration_address
from segue.agent.roles import migration_completed
from segue.agent.vms import VMManager
from segue.api.agent import IncomingAnswer, RecoverAnswer
from segue.api.qemu import MigrationStatus
from segue.api.vm import VMInfo
from segue.domain.errors import Conflict, InvalidRequest, SegueError
from segue.domain.vm import VMSpec, VMState, validate_vm_spec
from segue.files import write_json_atomic
from segue.qemu.argv import RuntimePaths
from segue.qemu.machine import QemuMachine
from segue.qemu.migration import ParameterValue, QemuMigration, migration_event_status
from segue.qemu.migration_tls import Command
from segue.qemu.qmp import QMPEvent

log = logging.getLogger(__name__)

# QEMU waits announce-initial ms (default 50; 7.2 accepts 0..100000) after the incoming
# migration completed before its first RARP: 1 ms lets the network learn the new port at once.
ANNOUNCE_PARAMETERS: dict[str, ParameterValue] = {"announce-initial": 1}
POSTCOPY_RUN_TIMEOUT_S = 30.0  # from post-copy's start until the device state is in


def free_port(address: str) -> int:
    """A TCP port free on ``address`` now (the kernel's pick; QEMU binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


class Incoming:
    """The destination side of migrations to this host's ``VMManager`` (see the module doc);
    the manager's ``MigrationHook``."""

    def __init__(self, manager: VMManager) -> None:
        self.m = manager

    def get(self, name: str) -> ManagedVM:
        return self.m.get(name)

    # ---- prepare ----
    async def prepare(self, spec: VMSpec, migration_id: str, capabilities: Mapping[str, bool],
                      parameters: Mapping[str, ParameterValue], tls_peer: str | None = None
                      ) -> IncomingAnswer:
        """Check the host like a start does, launch the incoming QEMU and listen; where.
        ``tls_peer``: listen for TLS, admitting that host's certificate alone
        (``segue.agent.migtls``; ``MIGRATION_TLS_UNAVAILABLE`` without credentials, checked
        before QEMU starts).

        On any failure the QEMU is killed and the local definition removed before the error
        is raised."""
        address = await migration_address(self.m.config)
        tls = (migtls.destination_setup(self.m.config, migration_id, tls_peer)
               if tls_peer is not None else [])
        if spec.serial_log is not None:  # an older source's; the console log is the runtime dir's
            log.warning("%r: ignoring the source's serial_log %r", spec.name, spec.serial_log)
            spec = confine.without_serial_log(spec)
        self._check(spec)
        vm = ManagedVM(spec=spec, runtime=RuntimePaths(self.m.store.runtime_dir(spec.name)),
                       incoming=migration_id)
        self.m.vms[spec.name] = vm  # no await since the checks: the name is taken atomically
        try:
            async with vm.lock:
                write_json_atomic(vm.runtime.directory / "spec.json", spec.to_dict())
                write_json_atomic(vm.runtime.role_file,
                                  {"role": "incoming", "migration_id": migration_id})
                await self.m.launch(vm, incoming="defer")
                answer = await self._listen(vm, address, capabilities, parameters, tls)
        except BaseException:
            await asyncio.shield(self._discard(vm, "incoming migration not prepared"))
            raise
        log.info("%s: incoming migration %s on %s", spec.name, migration_id, answer.uri)
        return answer

    def _check(self, spec: VMSpec) -> None:
        """The admission checks of define + start, for a VM that exists elsewhere already:
        its own datastore entry (naming the source) is expected and not a clash. Its files
        must lie under this host's roots (``file_paths``), as a new VM's must."""
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

    async def _listen(self, vm: ManagedVM, address: str, capabilities: Mapping[str, bool],
                      parameters: Mapping[str, ParameterValue], tls: list[Command]
                      ) -> IncomingAnswer:
        qemu = QemuMigration(qmp_of(vm))
        await qemu.set_capabilities(capabilities)
        await qemu.set_parameters({**ANNOUNCE_PARAMETERS, **parameters})
        await qemu.run(tls)
        await qemu.incoming(f"tcp:{address}:0")
        port = await qemu.listening_port()
        announce = await qemu.announce_parameters()
        await vm.refresh_state()
        return IncomingAnswer(uri=f"tcp:{address}:{port}", pid=vm.pid, state=vm.state,
                              migration_id=vm.incoming, announce=announce,
                              tls=await qemu.uses_tls())

    # ---- as it arrives (the manager's MigrationHook) ----
    async def event(self, vm: ManagedVM, event: QMPEvent) -> None:
        """A QEMU event of ``vm``: an incoming migration that completed resumes the guest;
        one that switched to post-copy runs it once its device state is in."""
        if vm.incoming is None:
            return
        status = migration_event_status(event)
        if status is MigrationStatus.COMPLETED:
            await self._resume_arrived(vm)
        elif status is MigrationStatus.POSTCOPY_ACTIVE:
            await self._run_postcopy(vm)

    async def adopted(self, vm: ManagedVM) -> None:
        """An incoming VM found after an agent restart: if it arrived meanwhile, resume it
        (no agent was there to do it)."""
        if vm.incoming is not None and vm.state == VMState.PAUSED \
                and migration_completed(await vm.migration()):
            await self._resume_arrived(vm)

    async def _take_over(self, vm: ManagedVM, attempts: int = 1) -> bool:
        """Take the VM's lease over from the migration's source (its handover names this
        host and this migration) before the guest runs here; whether this host holds it.
        Storage that does not answer is asked ``attempts`` times, a second apart."""
        if vm.generation is not None:
            return True
        for attempt in range(attempts):
            try:
                generation = await asyncio.to_thread(self.m.leases.take_over, vm.spec,
                                                     vm.incoming or "")
            except Conflict as err:
                log.error("%s arrived but stays paused: %s", vm.name, err)
                return False
            except SegueError as err:
                log.error("%s arrived, lease not taken over (%s)", vm.name, err)
                if attempt + 1 < attempts:
                    await asyncio.sleep(1.0)
                continue
            self.m.hold(vm, generation)
            return True
        return False

    async def _resume_arrived(self, vm: ManagedVM) -> None:
        """An incoming migration completed: take the VM's lease over and run the guest at
        once (its QEMU has -S, so it waits paused; QEMU announced the MACs already, at
        completion). Without the lease it stays paused: the source still holds the VM."""
        machine = vm.machine()
        try:
            if machine is not None and await self._take_over(vm):
                await machine.cont()
                self.m.guardians.nudge()
        except SegueError as err:
            log.error("%s arrived but does not resume: %s", vm.name, err)

    async def _run_postcopy(self, vm: ManagedVM) -> None:
        """Post-copy began: QEMU (with -S) leaves the guest paused once the device state is
        in; run it at once, as at completion (waits up to 30 s for that moment)."""
        try:
            async with asyncio.timeout(POSTCOPY_RUN_TIMEOUT_S):
                while vm.qmp is not None:
                    machine = QemuMachine(vm.qmp)
                    status = await machine.status(timeout=3)
                    if status != "inmigrate":
                        # the source cannot run it any more: the lease must come here
                        if status == "paused" and await self._take_over(
                                vm, attempts=int(POSTCOPY_RUN_TIMEOUT_S)):
                            await machine.cont()
                            self.m.guardians.nudge()
                        return
                    await asyncio.sleep(0.005)
        except TimeoutError:
            log.error("%s runs post-copy but its device state did not arrive in %.0f s",
                      vm.name, POSTCOPY_RUN_TIMEOUT_S)
        except SegueError as err:
            log.error("%s runs post-copy but does not resume: %s", vm.name, err)

    # ---- claim, abort, recover ----
    @requires(roles=INCOMING, states={VMState.RUNNING}, fresh=True,
              hint="claim it once the migration completed and it runs")
    async def claim(self, vm: ManagedVM) -> VMInfo:
        """The incoming VM runs here: write the datastore's vm.json naming this host (and
        the lease generation it took the VM over at) and clear the incoming role; the VM as
        this host now owns it. The migration's TLS objects and parameters are removed
        (a later migration from here sets up its own)."""
        self.m.store.save_generation(vm.spec, vm.generation)
        await self._clear_tls(vm)
        vm.runtime.role_file.unlink(missing_ok=True)
        log.info("%s: claimed (migration %s)", vm.name, vm.incoming)
        vm.incoming = None
        return await self.m.info(vm.name)

    @requires(roles=INCOMING, states=ANY_STATE - {VMState.RUNNING}, fresh=True,
              code="VM_RUNNING", wanted="paused or gone",
              hint="the VM runs here already: finish the migration (claim it), never abort it")
    async def abort(self, vm: ManagedVM) -> None:
        """Kill the incoming QEMU and forget the VM here; the datastore is not touched. A VM
        this host owns is never killed (``VM_NOT_INCOMING``), nor an incoming one that runs
        guest code already (``VM_RUNNING``): the guest would lose what it did here."""
        await self._discard(vm, "incoming migration aborted")
        log.info("%s: incoming migration %s aborted", vm.name, vm.incoming)

    @staticmethod
    async def _clear_tls(vm: ManagedVM) -> None:
        """Remove the arrived migration's TLS objects and parameters, once it has ended
        (logged, not raised: the VM runs here whatever this costs)."""
        try:
            qemu = QemuMigration(qmp_of(vm))
            if not (await qemu.query()).status.active:
                await qemu.clear_tls()
        except SegueError as err:
            log.warning("%s: migration TLS objects not removed: %s", vm.name, err)

    async def _discard(self, vm: ManagedVM, reason: str) -> None:
        await self.m.kill(vm, reason=reason)
        self.m.forget(vm)

    @requires(roles=INCOMING, states=LIVE, locked=False, hint="its QEMU is gone")
    async def recover(self, vm: ManagedVM) -> RecoverAnswer:
        """A paused post-copy: ``migrate-recover`` listening on a fresh port of this host's
        migration address; the uri for the source's resume. Raises Unavailable
        (``MIGRATION_NIC_UNAVAILABLE``) without a migration address."""
        address = await migration_address(self.m.config)
        uri = f"tcp:{address}:{free_port(address)}"
        await QemuMigration(qmp_of(vm)).recover(uri)
        log.info("%s: post-copy recovery listens on %s", vm.name, uri)
        return RecoverAnswer(uri=uri)
