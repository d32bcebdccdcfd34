"""The VMs of one host: define, start, stop, destroy, list, and adopt after a restart.

Each running VM has one QEMU process (daemonized, pidfile + QMP socket in its runtime dir)
and one QMP session owned by this agent. A watcher task per VM records QEMU's events and
notices when the process ends. Stopping the agent never stops a VM: a restarted agent
adopts every QEMU whose pidfile still names a live QEMU of that VM.

A VM has a role on this host (``segue.agent.roles``): ``owner``, ``source`` of a running
migration, or ``incoming`` (a migration's destination, not yet claimed; marked by a role
file in its runtime dir so a restarted agent knows). An incoming VM is never started from
scratch and its removal never touches the datastore's vm.json, which names its owner. The
migration operations themselves are in ``segue.agent.incoming`` (destination) and
``segue.agent.outgoing`` (source); the watcher hands every event of a VM to the destination
side (``MigrationHook``), which resumes a VM that arrived.

Every VM whose QEMU runs here holds a lease on shared storage (``segue.agent.leases``): a
start claims it (the generation grows), the agent renews it every ``lease_renew_s``, and
gives it up when the QEMU is gone. A renewal that finds the lease another host's fences the
QEMU (paused for good, ``fenced`` says why) unless it is a migration's source the
destination took over; one that cannot reach the storage for ``fence_after`` (two
renewals short of the expiry, at most 80 % of the lease) stops the VM before its lease
expires. An adopted QEMU takes its lease back up (renewed at once), or is fenced if another
host holds it now. Each QEMU whose lease this host holds has a lease guardian
(``segue.agent.guardians``), started before its guest runs and stopped with it, that kills
it before its lease expires if this agent is gone; a restarted agent keeps the guardians it
finds, and tells a QEMU one killed by its record (``last_exit``).

A VM's files must lie under this host's datastores or image dirs (``segue.agent.confine``),
checked on define and at every launch (QEMU opens the resolved paths); a stored spec that
fails loads all the same, logged, and cannot start. The console log is the runtime dir's.

A stopped VM can be re-homed to another host (``segue.agent.rehome``): once the datastore's
vm.json names that host as having adopted it from this one, this one refuses to start it
(``VM_REHOMED``) and, at its next start, forgets the copy it kept. (A start by the new host
writes vm.json afresh: from then on the lease decides, as after a migration.)

Start, stop and destroy are guarded (``segue.agent.guards``); stop and destroy take the
caller's ``generation`` (its fencing token), a start the lease generation its claim expects.
Errors: ``NotFound`` (``VM_NOT_FOUND``), ``Conflict`` (``VM_NOT_STOPPED``,
``VM_NOT_RUNNING``, ``VM_INCOMING``, ``VM_NOT_OWNED`` from the guard, and the leases'
``VM_LOCKED``, ``DISK_IN_USE``, ``VM_NOT_OWNED``),
the admission errors of ``segue.agent.admission``, the confinement errors of
``segue.agent.confine`` (``PATH_OUTSIDE_DATASTORE``, ``PATH_RESERVED``,
``SERIAL_LOG_OUTSIDE_RUNTIME``), and ``Unavailable`` from the QEMU layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
import uuid as uuidlib
from pathlib import Path
from typing import Protocol

from segue.agent import admission, confine
from segue.agent.config import AgentConfig
from segue.agent.facts import QemuCapabilities, datastore_facts, memory_facts, port_group_facts
from segue.agent.guardian import fence_after as fence_after  # the one formula, re-exported
from segue.agent.guardians import Guardians, clear_record, fence_record
from segue.agent.guards import ALL_ROLES, ANY_STATE, LIVE, OWNED, requires
from segue.agent.leases import Leases
from segue.agent.managed import ManagedVM, read_incoming
from segue.agent.roles import role_of
from segue.agent.taps import attach_tap
from segue.agent.vmstore import REHOMED_FROM, VM_FILE, VMStore
from segue.api.agent import MigrationView, VMEvent
from segue.api.qemu import QueryMigrate
from segue.api.vm import VMInfo, VMSpecBody
from segue.domain.errors import Conflict, NotFound, SegueError
from segue.domain.vm import VMSpec, VMState, validate_vm_spec
from segue.qemu import process
from segue.qemu.argv import LaunchPlan, RuntimePaths, build_argv, tap_name
from segue.qemu.direct_io import disk_cache_direct
from segue.qemu.machine import QemuMachine
from segue.qemu.qmp import QMPEvent, QMPSession

log = logging.getLogger(__name__)


class MigrationHook(Protocol):
    """What the destination side of a migration does when the manager adopts or watches a
    VM (``segue.agent.incoming.Incoming``); it never raises."""

    async def adopted(self, vm: ManagedVM) -> None: ...

    async def event(self, vm: ManagedVM, event: QMPEvent) -> None: ...


class NoMigrationHook:
    """A manager without a destination side: events are only recorded."""

    async def adopted(self, vm: ManagedVM) -> None:
        return None

    async def event(self, vm: ManagedVM, event: QMPEvent) -> None:
        return None


class VMManager:
    """All VMs of this host. Watcher tasks run in the TaskGroup given to ``load``; ``hook``
    is the destination side of migrations (set before ``load``: it resumes adopted arrivals)."""

    def __init__(self, config: AgentConfig, caps: QemuCapabilities) -> None:
        self.config = config
        self.caps = caps
        self.store = VMStore(config.host, config.vms_dir, dict(config.datastores))
        self.leases = Leases(config.host, dict(config.datastores), config.lease_duration_s)
        self.roots = confine.Roots(dict(config.datastores), tuple(config.image_dirs))
        self.guardians = Guardians(config.host, config.lease_duration_s, config.lease_renew_s,
                                   self.leases.vm_file)
        self.vms: dict[str, ManagedVM] = {}
        self.hook: MigrationHook = NoMigrationHook()
        self._tg: asyncio.TaskGroup | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None

    # ---- lifecycle of the manager ----
    async def load(self, tg: asyncio.TaskGroup) -> None:
        """Read definitions and adopt every VM whose QEMU still runs."""
        self._tg = tg
        self.config.vms_dir.mkdir(parents=True, exist_ok=True)
        for stored in self.store.local_specs():
            spec = self._loaded_spec(stored)
            vm = ManagedVM(spec=spec, runtime=RuntimePaths(self.store.runtime_dir(spec.name)))
            vm.incoming = read_incoming(vm.runtime)
            pid = process.read_pid(vm.runtime.pidfile)
            alive = pid is not None and process.is_qemu_of(pid, spec.uuid)
            if vm.incoming is not None and not alive:
                log.info("forgetting %s: its incoming QEMU is gone", spec.name)
                shutil.rmtree(vm.runtime.directory, ignore_errors=True)
                continue
            if not alive and vm.incoming is None and self.rehomed_away(spec):
                log.warning("forgetting %s: stopped here, and its datastore entry names "
                            "another host (re-homed there)", spec.name)
                shutil.rmtree(vm.runtime.directory, ignore_errors=True)
                continue
            self.vms[spec.name] = vm
            if pid is not None and alive:
                await self._adopt(vm, pid)
            else:
                vm.last_exit = fence_record(vm.runtime.directory)  # killed by its guardian?
                self._clear_runtime(vm)
        self._renewer = tg.create_task(self.renew_leases(), name="lease-renewals")
        self._keeper = tg.create_task(self.guardians.keep_all(lambda: list(self.vms.values())),
                                      name="lease-guardians")

    def _loaded_spec(self, spec: VMSpec) -> VMSpec:
        """A spec this host stored (maybe an older agent did): its ``serial_log`` is ignored;
        files outside this host's roots are logged (the VM is kept, a QEMU of it that runs
        adopted, never killed, and every start of it refused)."""
        try:
            confine.vm_files(spec, self.roots)
        except SegueError as err:
            log.error("%s cannot start on %s: %s", spec.name, self.config.host, err)
        if spec.serial_log is not None:
            log.warning("%s: ignoring its stored serial_log %s", spec.name, spec.serial_log)
        return confine.without_serial_log(spec)

    async def _adopt(self, vm: ManagedVM, pid: int) -> None:
        qmp = QMPSession(vm.spec.name)
        try:
            await qmp.connect(vm.runtime.qmp_socket, timeout=10)
        except SegueError as err:
            log.error("cannot adopt %s (pid %d): %s; leaving it running", vm.spec.name, pid, err)
            vm.state, vm.pid = VMState.UNKNOWN, pid
            return
        vm.pid, vm.qmp, vm.adopted = pid, qmp, True
        vm.started_at = Path(f"/proc/{pid}").stat().st_mtime
        await vm.refresh_state()
        log.info("adopted %s (pid %d, %s)", vm.spec.name, pid, vm.state.value)
        if vm.incoming is None:
            await self._adopt_lease(vm)
        await self.hook.adopted(vm)
        await self.guardians.keep(vm)  # one that outlived the old agent is kept
        self._watch(vm)

    async def _adopt_lease(self, vm: ManagedVM) -> None:
        """An adopted QEMU of a VM this host owned: take its lease back up where this host
        still holds it (or nobody does: claimed anew); a lease another host holds now means
        the VM is that host's: this QEMU is fenced (paused, never resumed)."""
        try:
            lease = await asyncio.to_thread(self.leases.read, vm.spec)
            if lease is not None and not lease.released and lease.host == self.config.host:
                vm.generation, vm.lease_renewed_at = lease.generation, time.monotonic()
                # at once: its guardian kills the VM before an unrenewed lease expires
                await asyncio.to_thread(self.leases.renew, vm.spec, lease.generation)
            elif vm.state != VMState.POSTMIGRATE:
                vm.generation = await asyncio.to_thread(self.leases.acquire, vm.spec)
            vm.lease_renewed_at = time.monotonic()
        except Conflict as err:
            await self.fence(vm, f"its lease is another host's: {err.message}")
        except SegueError as err:
            log.error("%s: lease not read after the restart (%s); renewals will retry",
                      vm.name, err)

    def hold(self, vm: ManagedVM, generation: int) -> None:
        """This host holds the VM's lease at ``generation`` now (claimed, kept or taken
        over): renewals start from here, and the datastore's vm.json names this host."""
        vm.generation, vm.lease_renewed_at, vm.fenced = generation, time.monotonic(), None
        self.store.save_generation(vm.spec, generation)

    async def fence(self, vm: ManagedVM, reason: str) -> None:
        """The VM is another host's now: pause its QEMU here for good (never resumed by
        Segue; reconciliation and the operator decide) and say why. Its guardian, if one
        runs, sees the lease another host's too and kills the QEMU."""
        vm.fenced, vm.generation = reason, None
        machine = vm.machine()
        if machine is not None and vm.live_state() == VMState.RUNNING:
            try:
                await machine.stop()
            except SegueError as err:
                log.error("%s: fencing could not pause it (%s); killing it", vm.name, err)
                await self.kill(vm, reason=f"fenced: {reason}")
                return
        log.error("%s fenced on %s: %s", vm.name, self.config.host, reason)

    async def close(self) -> None:
        """Stop watching and renewing (QEMU processes keep running, and so do their
        guardians: they kill them before their leases expire unless a restarted agent
        renews them in time)."""
        for task in (self._renewer, self._keeper):
            if task is not None:
                task.cancel()
        for vm in self.vms.values():
            if vm.watcher is not None:
                vm.watcher.cancel()
            if vm.qmp is not None:
                await vm.qmp.close()

    # ---- queries ----
    def get(self, name: str) -> ManagedVM:
        try:
            return self.vms[name]
        except KeyError:
            raise NotFound("VM_NOT_FOUND", f"no VM named {name} on {self.config.host}",
                           "list the host's VMs") from None

    async def info(self, name: str) -> VMInfo:
        """The VM's spec and live state (QEMU is asked, not remembered)."""
        return (await self.info_and_migration(name))[0]

    async def info_and_migration(self, name: str) -> tuple[VMInfo, QueryMigrate]:
        """The VM's info and QEMU's ``query-migrate`` answer it was derived from. The migration
        is asked first, so its status is never newer than the run state (a completed migration
        never comes with the running state from before the switchover)."""
        vm = self.get(name)
        migration = await vm.migration()
        await vm.refresh_state()
        return VMInfo(
            name=vm.spec.name, uuid=vm.spec.uuid, host=self.config.host, state=vm.state,
            role=role_of(vm.incoming is not None, migration, vm.state).value,
            migration_id=vm.incoming, generation=vm.generation, fenced=vm.fenced,
            pid=vm.pid, started_at=vm.started_at,
            adopted=vm.adopted, last_exit=vm.last_exit, accel=self.caps.accel,
            serial_log=str(vm.runtime.serial_log),
            spec=VMSpecBody.from_domain(vm.spec),
        ), migration

    async def migration_view(self, name: str) -> MigrationView:
        """The VM's migration as this host sees it: role, run state, QEMU's answer."""
        info, migration = await self.info_and_migration(name)
        return MigrationView(name=name, role=info.role, state=info.state,
                             migration_id=info.migration_id, migration=migration)

    async def list_all(self) -> list[VMInfo]:
        return [await self.info(name) for name in sorted(self.vms)]

    def events(self, name: str, since: int = 0) -> list[VMEvent]:
        """The VM's recorded QEMU events numbered above ``since``, oldest first."""
        return [e for e in self.get(name).events if e.seq > since]

    # ---- define / destroy ----
    def host_view(self, extra_files: list[str]) -> admission.HostView:
        """A snapshot of this host for the admission checks."""
        mem = memory_facts()
        return admission.HostView(
            host=self.config.host,
            port_groups={p.name: p.exists and p.up for p in port_group_facts(self.config)},
            datastores={d.name: d.present and d.uuid is not None
                        for d in datastore_facts(self.config)},
            existing_files=frozenset(p for p in extra_files if Path(p).exists()),
            machines=frozenset(self.caps.qemu.machines),
            machine_aliases=dict(self.caps.qemu.machine_aliases),
            memory_total_mib=mem.total_mib, memory_available_mib=mem.available_mib,
            logical_cpus=len(os.sched_getaffinity(0)),
            local_vms={n: v.spec for n, v in self.vms.items()},
            datastore_vms={e.spec.name: (e.host, e.spec) for e in self.store.datastore_entries()},
            cpu_excluded=frozenset(self.config.cpu_exclude_features),
        )

    def file_paths(self, spec: VMSpec) -> dict[str, str]:
        """Resolved path of every file the VM uses, by role; raises InvalidRequest
        (``PATH_OUTSIDE_DATASTORE``, ``PATH_RESERVED``) for one outside this host's
        datastores and image dirs (``segue.agent.confine``)."""
        return {role: str(path) for role, path in confine.vm_files(spec, self.roots).items()}

    async def define(self, spec: VMSpec) -> VMInfo:
        """Check and store a new VM (not started). Changes nothing if any check fails."""
        validate_vm_spec(spec)
        paths = self.file_paths(spec)
        confine.check_serial_log(spec, RuntimePaths(self.store.runtime_dir(spec.name)).serial_log)
        spec = confine.without_serial_log(spec)
        view = self.host_view(list(paths.values()))
        admission.check_unique(spec, view)
        admission.check_references(spec, view, paths)
        admission.check_cpu(spec, view)
        admission.check_fits(spec, view, starting=False)
        spec = spec.with_changes(uuid=spec.uuid or str(uuidlib.uuid4()),
                                 machine=admission.resolve_machine(spec, view),
                                 nics=[n.__class__(n.port_group, n.mac.lower(), n.model)
                                       for n in spec.nics])
        self.store.save(spec)
        self.vms[spec.name] = ManagedVM(spec=spec,
                                        runtime=RuntimePaths(self.store.runtime_dir(spec.name)))
        log.info("defined %s (%s)", spec.name, spec.uuid)
        return await self.info(spec.name)

    @requires(roles=ALL_ROLES, states=ANY_STATE, fencing=True)
    async def destroy(self, vm: ManagedVM, *, generation: int | None = None) -> None:
        """Hard power-off if running, then remove the definition: everywhere, except the
        datastore's vm.json when it names another host (an incoming or migrated-away VM).
        ``generation`` (checked by the guard): only if this host holds the VM at it; a
        stopped VM is held by no one, so pass none for it."""
        await self.kill(vm, reason="destroyed")
        if self.owns_datastore_entry(vm.spec):
            self.store.remove(vm.spec)
            with contextlib.suppress(SegueError):  # a lease left expires on its own
                await asyncio.to_thread(self.leases.forget, vm.spec)
        self.forget(vm)
        log.info("destroyed %s", vm.name)

    def rehomed_away(self, spec: VMSpec) -> bool:
        """True if the datastore's vm.json names another host that adopted the VM from this
        one (``segue.agent.rehome``), and no host has run it since."""
        data = self._datastore_entry(spec)
        return data.get("host", self.config.host) != self.config.host \
            and data.get(REHOMED_FROM) == self.config.host

    def _datastore_entry(self, spec: VMSpec) -> dict[str, object]:
        root = self.config.datastores.get(spec.datastore)
        try:
            data = json.loads((root / spec.name / VM_FILE).read_text()) if root else {}
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def owns_datastore_entry(self, spec: VMSpec) -> bool:
        """True unless the datastore's vm.json of the VM names another host."""
        return self._datastore_entry(spec).get("host", self.config.host) == self.config.host

    def forget(self, vm: ManagedVM) -> None:
        """Remove the VM's local definition and runtime dir (never the datastore's vm.json)."""
        shutil.rmtree(vm.runtime.directory, ignore_errors=True)
        if self.vms.get(vm.spec.name) is vm:
            del self.vms[vm.spec.name]

    # ---- start / stop ----
    @requires(roles=OWNED, states={VMState.STOPPED}, code="VM_NOT_STOPPED", wanted="stopped",
              hint="stop it first")
    async def start(self, vm: ManagedVM, generation: int | None = None) -> VMInfo:
        """Claim the VM's lease (``generation``: the one the caller believes current), start
        its QEMU, plug its taps, let it run. A failed start leaves no QEMU and no lease.
        Raises Conflict (``VM_LOCKED``, ``DISK_IN_USE``, ``VM_NOT_OWNED``; ``VM_REHOMED``
        when the datastore's vm.json names another host: it was re-homed there,
        ``segue.agent.rehome``) besides the admission errors."""
        if self.rehomed_away(vm.spec):
            raise Conflict("VM_REHOMED", f"{vm.name}'s definition names another host now "
                           f"(re-homed from {self.config.host})",
                           f"start it where the inventory puts it (segue vm start {vm.name})")
        paths = self.file_paths(vm.spec)
        view = self.host_view(list(paths.values()))
        admission.check_references(vm.spec, view, paths)
        admission.check_cpu(vm.spec, view)
        admission.check_fits(vm.spec, view, starting=True)
        self.hold(vm, await asyncio.to_thread(self.leases.acquire, vm.spec, generation))
        await self.launch(vm)
        return await self.info(vm.name)

    async def launch(self, vm: ManagedVM, incoming: str | None = None) -> None:
        """Start the VM's QEMU, connect QMP, plug its taps; then let it run, unless
        ``incoming`` (``-incoming``): it then waits for a migration. Leaves no QEMU on failure."""
        self._clear_runtime(vm)
        clear_record(vm.runtime.directory)
        vm.runtime.directory.mkdir(parents=True, exist_ok=True)
        vm.state = VMState.STARTING
        try:  # the files are checked again now, and QEMU opens them resolved, as checked
            files = confine.vm_files(vm.spec, self.roots)
            disks = tuple(files[f"disks[{i}]"] for i in range(len(vm.spec.disks)))
            plan = LaunchPlan(
                binary=self.config.qemu_binary, accel=self.caps.accel, runtime=vm.runtime,
                disk_files=disks, incoming=incoming,
                cpu_exclude=tuple(self.config.cpu_exclude_features),
                disk_cache_direct=await asyncio.to_thread(disk_cache_direct, disks),
                kernel_file=files.get("kernel"), initrd_file=files.get("initrd"),
                sandbox=self.config.qemu_sandbox)
            vm.pid = await process.launch_daemon(build_argv(vm.spec, plan), vm.runtime.qemu_log,
                                                 vm.runtime.pidfile, vm.runtime.qmp_socket)
            vm.qmp = qmp = QMPSession(vm.spec.name)
            await qmp.connect(vm.runtime.qmp_socket)
            for i, nic in enumerate(vm.spec.nics):
                # pyroute2's sync netlink socket cannot run inside the event loop's thread
                await asyncio.to_thread(attach_tap, tap_name(vm.spec.uuid, i),
                                        self.config.port_groups[nic.port_group])
            if incoming is None:
                await self.guardians.guard(vm, strict=True)  # before the guest runs
                await QemuMachine(qmp).cont()
        except BaseException:
            await asyncio.shield(self.kill(vm, reason="start failed"))
            raise
        vm.started_at, vm.adopted, vm.last_exit = time.time(), False, None
        await vm.refresh_state()
        self._watch(vm)
        log.info("started %s (pid %d%s)", vm.spec.name, vm.pid, ", incoming" if incoming else "")

    @requires(roles=ALL_ROLES, states=LIVE, fencing=True)
    async def stop(self, vm: ManagedVM, timeout: float = 30.0, force: bool = False, *,
                   generation: int | None = None) -> VMInfo:
        """ACPI power-off; if the guest has not gone after ``timeout`` s, hard power-off.
        ``generation`` (checked by the guard): only if this host holds the VM at it."""
        machine = vm.machine()
        if force or machine is None or vm.pid is None:
            await self.kill(vm, reason="powered off")
        else:
            await machine.powerdown()
            if await process.wait_exit(vm.pid, timeout):
                await self._await_exit(vm)
            else:
                log.warning("%s ignored ACPI power-off for %.0f s", vm.name, timeout)
                await self.kill(vm, reason=f"no ACPI shutdown within {timeout:.0f} s; "
                                            "powered off")
        return await self.info(vm.name)

    async def kill(self, vm: ManagedVM, reason: str) -> None:
        """Hard power-off (idempotent); returns when the process and its files are gone."""
        if vm.pid is not None and process.is_qemu_of(vm.pid, vm.spec.uuid):
            await process.kill_hard(vm.pid)
        if vm.pid is not None:
            vm.last_exit = reason
        await self._await_exit(vm)

    async def _await_exit(self, vm: ManagedVM) -> None:
        if vm.watcher is not None and not vm.watcher.done():
            await asyncio.wait({vm.watcher}, timeout=5)
        await self._exited(vm)

    # ---- watching ----
    def _watch(self, vm: ManagedVM) -> None:
        assert self._tg is not None, "load() gives the manager its TaskGroup"
        vm.watcher = self._tg.create_task(self._watch_loop(vm), name=f"watch-{vm.spec.name}")

    async def _watch_loop(self, vm: ManagedVM) -> None:
        """Record events until the QEMU process is gone, then clean up after it; every event
        goes to the destination side too (it resumes a VM that arrived)."""
        try:
            while vm.process_alive():
                event = await vm.qmp.next_event(0.25) if vm.qmp else None
                if event is None:
                    if vm.qmp is None:
                        await asyncio.sleep(0.25)
                    continue
                self._on_event(vm, event)
                await self.hook.event(vm, event)
            while vm.qmp is not None and (event := await vm.qmp.next_event(0)) is not None:
                self._on_event(vm, event)  # what QEMU said just before it went
            await self._exited(vm)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watcher of %s failed; the VM keeps running", vm.spec.name)

    @staticmethod
    def _on_event(vm: ManagedVM, event: QMPEvent) -> None:
        vm.record_event(event)
        if event.event == "SHUTDOWN":
            reason = event.data.get("reason", "unknown")
            by_guest = event.data.get("guest", True)
            vm.last_exit = f"{'guest shut down' if by_guest else 'shut down by host'} " \
                           f"({reason})"
        new_state = {"STOP": VMState.PAUSED, "RESUME": VMState.RUNNING,
                     "SHUTDOWN": VMState.SHUTDOWN, "GUEST_PANICKED": VMState.CRASHED
                     }.get(event.event)
        if new_state is not None:
            vm.state = new_state

    async def _exited(self, vm: ManagedVM) -> None:
        """The QEMU is gone: forget its pid and session and remove its runtime files."""
        if vm.pid is None and vm.qmp is None:
            if vm.state == VMState.STARTING:  # the launch failed before QEMU had a pid
                vm.state = VMState.STOPPED
            await self._release_lease(vm)  # the start's claim, given back
            return
        await self.guardians.stop(vm)
        vm.last_exit = fence_record(vm.runtime.directory) or vm.last_exit
        log.info("%s: QEMU (pid %s) exited: %s", vm.spec.name, vm.pid, vm.last_exit)
        qmp, vm.qmp, vm.pid = vm.qmp, None, None
        if qmp is not None:
            await qmp.close()
        vm.state, vm.adopted, vm.started_at = VMState.STOPPED, False, None
        self._clear_runtime(vm)
        await self._release_lease(vm)

    async def _release_lease(self, vm: ManagedVM) -> None:
        """Give the lease up once the QEMU is gone (a lease this host no longer holds at
        its generation is left alone); a failure is logged: the lease then expires."""
        generation, vm.generation = vm.generation, None
        if generation is None:
            return
        # a destination that took the VM over but never ran it hands it back unused
        unused = vm.incoming is not None and not any(e.event == "RESUME" for e in vm.events)
        try:
            await asyncio.to_thread(self.leases.release, vm.spec, generation, unused)
        except SegueError as err:
            log.error("%s: lease not released (%s); it expires in %.0f s", vm.name, err,
                      self.config.lease_duration_s)

    # ---- leases ----
    async def renew_leases(self) -> None:
        """Every ``lease_renew_s``: renew the lease of every VM whose QEMU runs here (see
        ``renew_lease``)."""
        while True:
            await asyncio.sleep(self.config.lease_renew_s)
            for vm in list(self.vms.values()):
                if vm.generation is not None and vm.process_alive():
                    await self.renew_lease(vm)

    async def renew_lease(self, vm: ManagedVM) -> None:
        """One renewal. A lease another host holds now: a migrated-away source lets it go
        (the destination took the VM over), any other QEMU is fenced. Storage that does not
        answer: retried at the next round, and once the lease has gone unrenewed for
        ``fence_after`` the VM is stopped, well before another host may claim it."""
        generation = vm.generation
        if generation is None:
            return
        try:
            await asyncio.to_thread(self.leases.renew, vm.spec, generation)
        except Conflict as err:
            if vm.generation != generation:
                return  # released or taken over meanwhile
            await vm.refresh_state()
            if vm.state == VMState.POSTMIGRATE:
                vm.generation = None
                log.info("%s: taken over by the migration's destination", vm.name)
            else:
                await self.fence(vm, err.message)
            return
        except SegueError as err:
            since = time.monotonic() - (vm.lease_renewed_at or 0.0)
            limit = fence_after(self.config.lease_duration_s, self.config.lease_renew_s)
            log.error("%s: lease not renewed for %.0f s (%s)", vm.name, since, err)
            if since >= limit:
                reason = (f"fenced: its lease could not be renewed for {since:.0f} s "
                          f"({err.message}); stopped before it expires")
                vm.fenced, vm.generation = reason, None
                await self.kill(vm, reason=reason)
            return
        vm.lease_renewed_at = time.monotonic()

    @staticmethod
    def _clear_runtime(vm: ManagedVM) -> None:
        for path in (vm.runtime.pidfile, vm.runtime.qmp_socket, vm.runtime.serial_socket):
            path.unlink(missing_ok=True)

