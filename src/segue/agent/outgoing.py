"""The source side of a live migration: what this host does to send a VM away.

The controller drives both agents (``segue.clients.agent.AgentClient``); the destination's
side is ``segue.agent.incoming``.

- ``migrate``: set the capabilities (always with ``events``) and parameters, with ``tls``
  the stream's TLS (``segue.agent.migtls``), run ``migrate`` to the uri the destination's
  prepare returned; ``cancel`` breaks it off (QEMU keeps the VM running) and removes the
  migration's TLS objects, as ``resume`` does; ``release`` quits the QEMU once the
  destination has claimed the VM; ``resume`` runs a ``paused``/``postmigrate`` VM again,
  the rollback after a completed migration whose destination then failed.
- policy and post-copy: ``dirty_rate`` samples the guest before a start;
  ``set_parameters`` mid-flight; ``start_postcopy``; ``resume_migration`` reconnects a paused
  post-copy to the destination's recovery uri.
- either side: ``status``; ``pause`` (a post-copy whose stream hangs, so it can be
  recovered).

The datastore's vm.json is never written here (the destination's claim does); ``release``
removes the local definition. Operations are guarded (``segue.agent.guards``);
``migrate``, ``cancel`` and ``resume`` take the caller's ``generation`` (its fencing token:
``VM_NOT_OWNED`` unless this host holds the VM at it). The mid-flight calls (parameters,
post-copy, its recovery) take none: they act on the migration that ``migrate`` started at
a checked generation, and a post-copy's run past the handover, when this host holds no
lease any more.

Errors: ``NotFound`` (``VM_NOT_FOUND``); ``Conflict`` (``VM_INCOMING``, ``VM_NOT_RUNNING``,
``MIGRATION_IN_PROGRESS``, ``VM_NOT_MIGRATED``, ``VM_NOT_PAUSED``, ``VM_NOT_OWNED``,
``VM_FENCED``, the leases' ``VM_LOCKED``); ``InvalidRequest``
(``MIGRATION_URI_INVALID``, ``MIGRATION_ID_INVALID``); ``Unavailable``
(``MIGRATION_TLS_UNAVAILABLE``, ``DIRTY_RATE_UNAVAILABLE``, and QEMU's
``QMP_COMMAND_FAILED``, ``QMP_UNAVAILABLE``, ``QMP_ANSWER_INVALID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping

from segue.agent import migtls
from segue.agent.guards import ALL_ROLES, LIVE, OWNED, qmp_of, requires
from segue.agent.managed import ManagedVM
from segue.agent.roles import VMRole
from segue.agent.vms import VMManager
from segue.api.agent import DirtyRateAnswer, MigrationView, ParametersAnswer
from segue.api.vm import VMInfo
from segue.domain.errors import Conflict, InvalidRequest, SegueError
from segue.domain.vm import VMState
from segue.qemu import process
from segue.qemu.machine import QemuMachine
from segue.qemu.migration import ParameterValue, QemuMigration

log = logging.getLogger(__name__)

TCP_URI_RE = re.compile(r"tcp:(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]|[\w.-]+):(\d{1,5})")
CANCEL_TIMEOUT_S = 10.0
QUIT_TIMEOUT_S = 10.0
DIRTY_RATE_SAMPLE_MS = 300  # long enough to see a busy guest, short enough to hide in prepare


def check_tcp_uri(uri: str) -> None:
    """Only ``tcp:HOST:PORT`` is accepted (``exec:`` would run a shell command as root)."""
    if not TCP_URI_RE.fullmatch(uri):
        raise InvalidRequest("MIGRATION_URI_INVALID", f"{uri!r} is not tcp:HOST:PORT",
                             "pass the uri the destination's prepare_incoming returned")


def _fenced(vm: ManagedVM) -> Conflict:
    return Conflict("VM_FENCED", f"{vm.name} is fenced on this host: {vm.fenced}",
                    "it runs elsewhere (or did): never run this copy; destroy it here")


def _held(vm: ManagedVM) -> int:
    """The lease generation this host holds the VM at; raises Conflict (``VM_FENCED``,
    ``VM_NOT_OWNED``) when it holds none."""
    if vm.fenced is not None:
        raise _fenced(vm)
    if vm.generation is None:
        raise Conflict("VM_NOT_OWNED", f"this host holds no lease of {vm.name}",
                       "start it here first (a VM runs only where it holds its lease)")
    return vm.generation


class Outgoing:
    """Migrations from this host's ``VMManager`` (see the module doc)."""

    def __init__(self, manager: VMManager) -> None:
        self.m = manager

    def get(self, name: str) -> ManagedVM:
        return self.m.get(name)

    async def status(self, name: str) -> MigrationView:
        """The VM's migration as this host sees it (either side)."""
        return await self.m.migration_view(name)

    @requires(roles={VMRole.OWNER}, states={VMState.RUNNING}, fresh=True, fencing=True)
    async def migrate(self, vm: ManagedVM, uri: str, capabilities: Mapping[str, bool],
                      parameters: Mapping[str, ParameterValue], migration_id: str,
                      destination: str, *, generation: int | None = None,
                      tls: bool = False) -> MigrationView:
        """Hand the VM's lease over to ``destination`` for ``migration_id`` and migrate the
        running VM to ``uri``; the status. ``generation`` (checked by the guard): only if
        this host holds the VM at it, which the handover then carries. Raises InvalidRequest
        (``MIGRATION_URI_INVALID``) for anything but ``tcp:HOST:PORT``, Conflict
        (``VM_NOT_OWNED``, ``VM_FENCED``) for a VM this host does not hold the lease of (at
        ``generation``), before anything is sent.

        The VM's guardian is stopped first: from the handover on, the destination may take
        the lease over, and the source's QEMU must be left for the job to read its end
        (``cancel``, ``resume`` and the guardians' keeper start it again if the source
        keeps the VM). A migration that does not start gets it back at once.

        ``tls``: the stream is TLS with this host's credentials, the destination's
        certificate checked for the name ``destination`` (``segue.agent.migtls``; raises
        Unavailable ``MIGRATION_TLS_UNAVAILABLE`` without credentials, before anything is
        changed). Whatever an earlier migration left of TLS is removed first; a migration
        that does not start removes its own."""
        check_tcp_uri(uri)
        generation = _held(vm)
        setup = migtls.source_setup(self.m.config, migration_id, destination) if tls else []
        await self.m.guardians.stop(vm)
        qemu = QemuMigration(qmp_of(vm))
        try:
            await asyncio.to_thread(self.m.leases.hand_over, vm.spec, generation, destination,
                                    migration_id)
            await qemu.clear_tls()
            await qemu.set_capabilities(capabilities)
            if parameters:
                await qemu.set_parameters(parameters)
            await qemu.run(setup)
            encrypted = await qemu.uses_tls()
            await qemu.migrate(uri)
        except BaseException:
            await asyncio.shield(self._not_started(vm, qemu))
            raise
        log.info("%s: migrating to %s%s", vm.name, uri, " over TLS" if encrypted else "")
        view = await self.m.migration_view(vm.name)
        return view.model_copy(update={"tls": encrypted})

    async def _not_started(self, vm: ManagedVM, qemu: QemuMigration) -> None:
        """A migrate that failed: the VM's guardian back, its TLS objects gone (unless a
        migration runs after all: the job's cancel removes them then)."""
        await self.m.guardians.guard(vm)
        await self._clear_tls(vm, qemu)

    @staticmethod
    async def _clear_tls(vm: ManagedVM, qemu: QemuMigration) -> None:
        """Remove the migration's TLS objects and parameters once nothing migrates; logged,
        not raised (the next migration removes them first anyway)."""
        try:
            if not (await qemu.query()).status.active:
                await qemu.clear_tls()
        except SegueError as err:
            log.warning("%s: migration TLS objects not removed: %s", vm.name, err)

    @requires(roles=OWNED, states=LIVE, hint="nothing to cancel", fencing=True)
    async def cancel(self, vm: ManagedVM, *, generation: int | None = None) -> MigrationView:
        """``migrate_cancel``, then wait (up to 10 s) until QEMU's migration ended; the
        status. Cancelling when nothing migrates changes nothing. ``generation`` (checked by
        the guard): only if this host holds the VM at it (once the destination took the VM
        over this host holds none: the copy is done, there is nothing left to cancel)."""
        await QemuMigration(qmp_of(vm)).cancel()
        with contextlib.suppress(TimeoutError):  # the status says how far it got
            async with asyncio.timeout(CANCEL_TIMEOUT_S):
                # the watcher consumes the MIGRATION events: QEMU is asked
                while (await vm.migration()).status.active:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        if vm.generation is not None and vm.live_state() == VMState.RUNNING:
            with contextlib.suppress(SegueError):  # the handover, withdrawn
                vm.generation = await asyncio.to_thread(self.m.leases.ensure, vm.spec,
                                                        vm.generation)
            await self.m.guardians.guard(vm)  # stopped at the handover
        await self._clear_tls(vm, QemuMigration(qmp_of(vm)))
        log.info("%s: migration cancelled", vm.name)
        return await self.m.migration_view(vm.name)

    @requires(roles=OWNED, states={VMState.RUNNING}, fresh=True)
    async def dirty_rate(self, vm: ManagedVM, calc_time_ms: int = DIRTY_RATE_SAMPLE_MS
                         ) -> DirtyRateAnswer:
        """Sample the running guest's dirty rate over ``calc_time_ms`` (rounded up to whole
        seconds by a QEMU before 8.2). Raises Unavailable (``DIRTY_RATE_UNAVAILABLE``)."""
        sample = await QemuMigration(qmp_of(vm)).sample_dirty_rate(calc_time_ms)
        return DirtyRateAnswer(dirty_rate_mibs=sample.mib_per_s,
                               calc_time_ms=sample.calc_time_ms)

    @requires(roles=OWNED, states=LIVE, locked=False, hint="its QEMU is gone")
    async def set_parameters(self, vm: ManagedVM, parameters: Mapping[str, ParameterValue]
                             ) -> ParametersAnswer:
        """``migrate-set-parameters`` now (QEMU applies them mid-flight); the parameters
        QEMU then reports."""
        qemu = QemuMigration(qmp_of(vm))
        await qemu.set_parameters(parameters)
        return ParametersAnswer(parameters=await qemu.parameters())

    @requires(roles=OWNED, states=LIVE, locked=False, hint="its QEMU is gone")
    async def start_postcopy(self, vm: ManagedVM) -> MigrationView:
        """``migrate-start-postcopy``: the source stops after this pass and the destination
        runs the guest, fetching the pages it lacks; the status."""
        await QemuMigration(qmp_of(vm)).start_postcopy()
        log.info("%s: switching to post-copy", vm.name)
        return await self.m.migration_view(vm.name)

    @requires(roles=ALL_ROLES, states=LIVE, locked=False, hint="nothing to pause")
    async def pause(self, vm: ManagedVM) -> MigrationView:
        """``migrate-pause`` (either side, out of band: the destination's main thread may
        be blocked): a post-copy whose stream hangs goes ``postcopy-paused``; the status."""
        await QemuMigration(qmp_of(vm)).pause()
        return await self.m.migration_view(vm.name)

    @requires(roles=OWNED, states=LIVE, locked=False, hint="its QEMU is gone")
    async def resume_migration(self, vm: ManagedVM, uri: str) -> MigrationView:
        """A paused post-copy: ``migrate`` with ``resume`` to the uri the destination's
        ``recover`` returned; the status."""
        check_tcp_uri(uri)
        await QemuMigration(qmp_of(vm)).resume(uri)
        log.info("%s: post-copy resumed to %s", vm.name, uri)
        return await self.m.migration_view(vm.name)

    @requires(roles=OWNED, states={VMState.POSTMIGRATE}, fresh=True, code="VM_NOT_MIGRATED",
              wanted="postmigrate", hint="release a VM only after its migration completed and "
                                         "the destination claimed it")
    async def release(self, vm: ManagedVM) -> None:
        """Quit the migrated-away QEMU (kill it if it does not quit) and remove the local
        definition; the datastore's vm.json names the destination now and stays. It takes
        no generation: the source it releases holds none by design (the destination took
        the lease over; this host notices at its next renewal), so no caller could name
        one it holds."""
        machine = QemuMachine(qmp_of(vm))
        try:
            await machine.quit()
        except SegueError as err:
            log.warning("%s: quit failed (%s); killing it", vm.name, err)
        if vm.pid is not None:
            await process.wait_exit(vm.pid, QUIT_TIMEOUT_S)
        await self.m.kill(vm, reason="migrated away")
        self.m.forget(vm)
        log.info("%s: released", vm.name)

    @requires(roles=OWNED, states={VMState.PAUSED, VMState.POSTMIGRATE}, idle=True, fresh=True,
              code="VM_NOT_PAUSED", wanted="paused or postmigrate",
              hint="only a paused or migrated-away VM can be resumed", fencing=True)
    async def resume(self, vm: ManagedVM, *, generation: int | None = None) -> VMInfo:
        """Run a paused or ``postmigrate`` VM again (``cont``): the rollback of a completed
        migration whose destination failed. Only with the VM's lease: kept (its handover
        withdrawn) or claimed anew; refused while the destination holds it (``VM_LOCKED``,
        ``VM_NOT_OWNED``), or for a fenced QEMU (``VM_FENCED``): its memory is older than
        what another host ran. ``generation`` (checked by the guard): only if this host
        still holds the VM at it; a source whose lease a destination took over and returned
        unused holds none, and only a resume without a generation claims it anew."""
        if vm.fenced is not None:
            raise _fenced(vm)
        self.m.hold(vm, await asyncio.to_thread(self.m.leases.ensure, vm.spec, vm.generation))
        await self.m.guardians.guard(vm)  # stopped at the handover; before the guest runs
        await self._clear_tls(vm, QemuMigration(qmp_of(vm)))
        await QemuMachine(qmp_of(vm)).cont()
        log.info("%s: resumed on its source", vm.name)
        return await self.m.info(vm.name)
