"""The VMs of one host: define, start, stop, destroy, list, and adopt after a restart.

Each running VM has one QEMU process (daemonized, pidfile + QMP socket in its runtime dir)
and one QMP session owned by this agent. A watcher task per VM records QEMU's events and
notices when the process ends. Stopping the agent never stops a VM: a restarted agent
adopts every QEMU whose pidfile still names a live QEMU of that VM.

Errors: ``NotFound`` (``VM_NOT_FOUND``), ``Conflict`` (``VM_NOT_STOPPED``,
``VM_NOT_RUNNING``), the admission errors of ``segue.agent.admission``, and
``Unavailable`` from the QEMU layer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid as uuidlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segue.agent import admission
from segue.agent.config import AgentConfig
from segue.agent.facts import QemuCapabilities, datastore_facts, memory_facts, port_group_facts
from segue.agent.taps import attach_tap
from segue.agent.vmstore import VMStore
from segue.domain.errors import Conflict, NotFound, SegueError
from segue.domain.vm import VMSpec, VMState, state_from_qmp_status, validate_vm_spec
from segue.qemu import process
from segue.qemu.argv import LaunchPlan, RuntimePaths, build_argv, tap_name
from segue.qemu.qmp import QMPSession

log = logging.getLogger(__name__)
EVENTS_KEPT = 1000


@dataclass
class ManagedVM:
    """A VM this agent owns, and what it knows of its QEMU."""

    spec: VMSpec
    runtime: RuntimePaths
    pid: int | None = None
    qmp: QMPSession | None = None
    watcher: asyncio.Task[None] | None = None
    state: VMState = VMState.STOPPED
    started_at: float | None = None
    last_exit: str | None = None
    adopted: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    event_seq: int = 0

    def record_event(self, event: dict[str, Any]) -> None:
        self.event_seq += 1
        entry = {"seq": self.event_seq, **event}
        self.events.append(entry)
        with self.runtime.events_log.open("a") as f:
            f.write(json.dumps(entry) + "\n")


class VMManager:
    """All VMs of this host. Watcher tasks run in the TaskGroup given to ``start_watchers``."""

    def __init__(self, config: AgentConfig, caps: QemuCapabilities) -> None:
        self.config = config
        self.caps = caps
        self.store = VMStore(config.host, config.vms_dir, dict(config.datastores))
        self.vms: dict[str, ManagedVM] = {}
        self._tg: asyncio.TaskGroup | None = None

    # ---- lifecycle of the manager ----
    async def load(self, tg: asyncio.TaskGroup) -> None:
        """Read definitions and adopt every VM whose QEMU still runs."""
        self._tg = tg
        self.config.vms_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.store.local_specs():
            vm = ManagedVM(spec=spec, runtime=RuntimePaths(self.store.runtime_dir(spec.name)))
            self.vms[spec.name] = vm
            pid = process.read_pid(vm.runtime.pidfile)
            if pid is not None and process.is_qemu_of(pid, spec.uuid):
                await self._adopt(vm, pid)
            else:
                self._clear_runtime(vm)

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
        await self._refresh_state(vm)
        log.info("adopted %s (pid %d, %s)", vm.spec.name, pid, vm.state.value)
        self._watch(vm)

    async def close(self) -> None:
        """Stop watching (QEMU processes keep running)."""
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

    async def info(self, name: str) -> dict[str, Any]:
        """The VM's spec and live state (QEMU is asked, not remembered)."""
        vm = self.get(name)
        await self._refresh_state(vm)
        return {
            "name": vm.spec.name, "uuid": vm.spec.uuid, "host": self.config.host,
            "state": vm.state.value, "pid": vm.pid, "started_at": vm.started_at,
            "adopted": vm.adopted, "last_exit": vm.last_exit, "accel": self.caps.accel,
            "serial_log": vm.spec.serial_log or str(vm.runtime.default_serial_log),
            "spec": vm.spec.to_dict(),
        }

    async def list_all(self) -> list[dict[str, Any]]:
        return [await self.info(name) for name in sorted(self.vms)]

    async def _refresh_state(self, vm: ManagedVM) -> None:
        if vm.qmp is None or not vm.qmp.connected:
            return
        try:
            status = await vm.qmp.execute("query-status", timeout=3)
            vm.state = state_from_qmp_status(str(status["status"]))
        except SegueError:
            pass  # the watcher notices a dead QEMU; keep the last known state

    def events(self, name: str, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.get(name).events if e["seq"] > since]

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
        )

    def file_paths(self, spec: VMSpec) -> dict[str, str]:
        """Absolute path of every file the VM uses, by role."""
        paths = {}
        if spec.kernel:
            paths["kernel"] = spec.kernel
        if spec.initrd:
            paths["initrd"] = spec.initrd
        for i, disk in enumerate(spec.disks):
            root = self.config.datastores.get(disk.datastore)
            if root is not None:
                paths[f"disks[{i}]"] = str(root / disk.path)
        return paths

    async def define(self, spec: VMSpec) -> dict[str, Any]:
        """Check and store a new VM (not started). Changes nothing if any check fails."""
        validate_vm_spec(spec)
        paths = self.file_paths(spec)
        view = self.host_view(list(paths.values()))
        admission.check_unique(spec, view)
        admission.check_references(spec, view, paths)
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

    async def destroy(self, name: str) -> None:
        """Hard power-off if running, then remove the definition everywhere."""
        vm = self.get(name)
        async with vm.lock:
            await self._kill(vm, reason="destroyed")
            self.store.remove(vm.spec)
            del self.vms[name]
        log.info("destroyed %s", name)

    # ---- start / stop ----
    def _is_running(self, vm: ManagedVM) -> bool:
        return vm.pid is not None and process.pid_alive(vm.pid)

    async def start(self, name: str) -> dict[str, Any]:
        """Start the VM's QEMU, plug its taps, let it run. A failed start leaves no QEMU."""
        vm = self.get(name)
        async with vm.lock:
            if self._is_running(vm):
                raise Conflict("VM_NOT_STOPPED", f"{name} is already running (pid {vm.pid})",
                               "stop it first")
            paths = self.file_paths(vm.spec)
            view = self.host_view(list(paths.values()))
            admission.check_references(vm.spec, view, paths)
            admission.check_fits(vm.spec, view, starting=True)
            await self._launch(vm)
        return await self.info(name)

    async def _launch(self, vm: ManagedVM) -> None:
        self._clear_runtime(vm)
        vm.runtime.directory.mkdir(parents=True, exist_ok=True)
        plan = LaunchPlan(
            binary=self.config.qemu_binary, accel=self.caps.accel, runtime=vm.runtime,
            disk_files=tuple(self.config.datastores[d.datastore] / d.path for d in vm.spec.disks),
        )
        vm.state = VMState.STARTING
        try:
            vm.pid = await process.launch_daemon(build_argv(vm.spec, plan), vm.runtime.qemu_log,
                                                 vm.runtime.pidfile)
            vm.qmp = QMPSession(vm.spec.name)
            await vm.qmp.connect(vm.runtime.qmp_socket)
            for i, nic in enumerate(vm.spec.nics):
                # pyroute2's sync netlink socket cannot run inside the event loop's thread
                await asyncio.to_thread(attach_tap, tap_name(vm.spec.uuid, i),
                                        self.config.port_groups[nic.port_group])
            await vm.qmp.execute("cont")
        except BaseException:
            await asyncio.shield(self._kill(vm, reason="start failed"))
            raise
        vm.started_at, vm.adopted, vm.last_exit = time.time(), False, None
        await self._refresh_state(vm)
        self._watch(vm)
        log.info("started %s (pid %d)", vm.spec.name, vm.pid)

    async def stop(self, name: str, timeout: float = 30.0, force: bool = False) -> dict[str, Any]:
        """ACPI power-off; if the guest has not gone after ``timeout`` s, hard power-off."""
        vm = self.get(name)
        async with vm.lock:
            if not self._is_running(vm) or vm.pid is None:
                raise Conflict("VM_NOT_RUNNING", f"{name} is not running", "start it first")
            if force or vm.qmp is None:
                await self._kill(vm, reason="powered off")
            else:
                await vm.qmp.execute("system_powerdown")
                if await process.wait_exit(vm.pid, timeout):
                    await self._await_exit(vm)
                else:
                    log.warning("%s ignored ACPI power-off for %.0f s", name, timeout)
                    await self._kill(vm, reason=f"no ACPI shutdown within {timeout:.0f} s; "
                                                "powered off")
        return await self.info(name)

    async def _kill(self, vm: ManagedVM, reason: str) -> None:
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
        """Record events until the QEMU process is gone, then clean up after it."""
        try:
            while vm.pid is not None and process.pid_alive(vm.pid):
                event = await vm.qmp.next_event(0.25) if vm.qmp else None
                if event is None:
                    if vm.qmp is None:
                        await asyncio.sleep(0.25)
                    continue
                self._on_event(vm, event)
            while vm.qmp is not None and (event := await vm.qmp.next_event(0)) is not None:
                self._on_event(vm, event)  # what QEMU said just before it went
            await self._exited(vm)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watcher of %s failed; the VM keeps running", vm.spec.name)

    def _on_event(self, vm: ManagedVM, event: dict[str, Any]) -> None:
        ts = event.get("timestamp") or {}
        entry = {"event": event.get("event"), "data": event.get("data", {}),
                 "timestamp": ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6}
        vm.record_event(entry)
        name = entry["event"]
        if name == "SHUTDOWN":
            reason = entry["data"].get("reason", "unknown")
            by = "guest" if entry["data"].get("guest", True) else "host"
            vm.last_exit = f"{'guest shut down' if by == 'guest' else 'shut down by host'} " \
                           f"({reason})"
        new_state = {"STOP": VMState.PAUSED, "RESUME": VMState.RUNNING,
                     "SHUTDOWN": VMState.SHUTDOWN, "GUEST_PANICKED": VMState.CRASHED}.get(str(name))
        if new_state is not None:
            vm.state = new_state

    async def _exited(self, vm: ManagedVM) -> None:
        """The QEMU is gone: forget its pid and session and remove its runtime files."""
        if vm.pid is None and vm.qmp is None:
            if vm.state == VMState.STARTING:  # the launch failed before QEMU had a pid
                vm.state = VMState.STOPPED
            return
        log.info("%s: QEMU (pid %s) exited: %s", vm.spec.name, vm.pid, vm.last_exit)
        qmp, vm.qmp, vm.pid = vm.qmp, None, None
        if qmp is not None:
            await qmp.close()
        vm.state, vm.adopted, vm.started_at = VMState.STOPPED, False, None
        self._clear_runtime(vm)

    @staticmethod
    def _clear_runtime(vm: ManagedVM) -> None:
        for path in (vm.runtime.pidfile, vm.runtime.qmp_socket, vm.runtime.serial_socket):
            path.unlink(missing_ok=True)
