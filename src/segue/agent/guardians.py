"""The agent's side of the lease guardians (``segue.agent.guardian``): start one for a VM
whose lease this host holds, find the one that runs, stop it, read what it recorded.

A VM needs a guardian while its QEMU runs, this host holds its lease at a generation, it is
not fenced, and it is not the source of a migration (``needs_guardian``): from the moment
the source hands the VM over (``migrate``) until the migration ends, the lease is the
destination's to take, and the source's QEMU must stay as it is for the job to read its
final status (``segue.agent.outgoing`` stops the guardian there and starts it again when
the source keeps the VM). The manager starts it before the guest runs on a start (which
fails without it) and on a source's resume; on adoption when none runs; and the keeper
(``keep_all``, every ``renew_s``) starts any that is missing, at once when nudged: right
after the guest runs on a migration's destination (``segue.agent.incoming``: not in the
switchover's blackout). It is stopped when the QEMU exits (stop, destroy, release, a
kill).

The guardian runs ``python -I`` on its own module file (the same code as this agent's), in
its own session: it outlives the agent. Its pid is in ``guardian.pid`` in the VM's runtime
dir; ``running`` finds it there and checks its command line (the guardian's file and the
VM's uuid), so a recycled pid is never taken for it.

Errors: ``Unavailable`` (``GUARDIAN_START_FAILED``, and the leases'
``LEASE_STORAGE_UNAVAILABLE`` when the VM's datastore is not mounted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from segue.agent import guardian
from segue.agent.managed import ManagedVM
from segue.agent.roles import VMRole, role_of
from segue.domain.errors import SegueError, Unavailable
from segue.domain.vm import VMSpec
from segue.files import log_tail
from segue.procs import pid_alive
from segue.qemu import process

log = logging.getLogger(__name__)

GUARDIAN_FILE = Path(guardian.__file__).resolve()
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 5.0


def needs_guardian(role: VMRole, generation: int | None, fenced: bool, alive: bool) -> bool:
    """Whether a VM's QEMU must have a guardian (see the module doc). Pure."""
    return alive and generation is not None and not fenced and role is not VMRole.SOURCE


@dataclass(frozen=True)
class RunningGuardian:
    """A guardian process found for a VM: its pid, and the claim and QEMU it guards."""

    pid: int
    generation: int | None
    qemu_pid: int | None

    def guards(self, vm: ManagedVM) -> bool:
        return self.generation == vm.generation and self.qemu_pid == vm.pid


def _option(args: list[str], flag: str) -> str | None:
    values = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == flag]
    return values[-1] if values else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def find_guardian(runtime: Path, uuid: str) -> RunningGuardian | None:
    """The guardian that runs for the VM with this ``uuid`` (its runtime dir ``runtime``),
    or None."""
    pid = process.read_pid(runtime / guardian.PIDFILE)
    if pid is None or not pid_alive(pid):
        return None
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if not any(a.endswith(GUARDIAN_FILE.name) for a in args[:3]) \
            or _option(args, "--uuid") != uuid:
        return None
    return RunningGuardian(pid, _int(_option(args, "--generation")),
                           _int(_option(args, "--qemu-pid")))


def fence_record(runtime: Path) -> str | None:
    """What the VM's guardian recorded when it killed its QEMU, as the VM's last exit
    (``fenced by its lease guardian at ...: why``); None without a record."""
    try:
        data = json.loads((runtime / guardian.RECORD).read_text())
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(data["at"])))
        return f"fenced by its lease guardian at {at}: {data['reason']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_record(runtime: Path) -> None:
    """Forget a previous QEMU's fence record (a new QEMU starts)."""
    (runtime / guardian.RECORD).unlink(missing_ok=True)


class Guardians:
    """The guardians of this ``host``'s VMs, with the lease timing they guard by."""

    def __init__(self, host: str, duration_s: float, renew_s: float,
                 lease_file: Callable[[VMSpec], Path], python: str = sys.executable) -> None:
        self.host = host
        self.duration_s = duration_s
        self.renew_s = renew_s
        self.lease_file = lease_file  # the VM's lease file (raises Unavailable)
        self.python = python
        self._locks: dict[str, asyncio.Lock] = {}  # per VM: one start or stop at a time
        self._nudged = asyncio.Event()

    def running(self, vm: ManagedVM) -> RunningGuardian | None:
        return find_guardian(vm.runtime.directory, vm.spec.uuid)

    async def guard(self, vm: ManagedVM, strict: bool = False) -> None:
        """Make sure one guardian guards the VM's QEMU at the generation this host holds it
        at (nothing to do without one): kept if it does already, one guarding another claim
        or QEMU replaced. One that does not start is raised with ``strict`` (a start: the
        guest never runs unguarded), else logged (the keeper tries again). Raises
        Unavailable (``GUARDIAN_START_FAILED``, ``LEASE_STORAGE_UNAVAILABLE``)."""
        if vm.generation is None or vm.pid is None:
            return
        try:
            async with self._lock(vm):
                running = self.running(vm)
                if running is not None and running.guards(vm):
                    return
                if running is not None:
                    log.info("%s: guardian pid %d guards generation %s of QEMU pid %s: "
                             "replaced", vm.name, running.pid, running.generation,
                             running.qemu_pid)
                    await process.kill_hard(running.pid, grace=STOP_GRACE_S)
                await self._start(vm, self.lease_file(vm.spec))
        except SegueError as err:
            if strict:
                raise
            log.error("%s: %s; the keeper tries again", vm.name, err)

    async def stop(self, vm: ManagedVM) -> None:
        """Stop the VM's guardian, if one runs (its QEMU is left as it is); returns once it
        is gone."""
        async with self._lock(vm):
            running = self.running(vm)
            if running is not None:
                await process.kill_hard(running.pid, grace=STOP_GRACE_S)
                log.info("%s: guardian pid %d stopped", vm.name, running.pid)

    async def keep(self, vm: ManagedVM) -> None:
        """Start a guardian for the VM if it needs one (``needs_guardian``; QEMU is asked
        for its role only when none guards it yet) and none guards it; a failure is
        logged."""
        if not needs_guardian(VMRole.OWNER, vm.generation, vm.fenced is not None,
                              vm.process_alive()):
            return
        running = self.running(vm)
        if running is not None and running.guards(vm):
            return
        role = VMRole.INCOMING  # took the VM over (it has a generation): QEMU not asked
        if vm.incoming is None:
            migration = await vm.migration()
            await vm.refresh_state()
            role = role_of(False, migration, vm.live_state())
        if needs_guardian(role, vm.generation, vm.fenced is not None, vm.process_alive()):
            await self.guard(vm)

    def nudge(self) -> None:
        """Have the keeper look now (a VM that needs a guardian started, where starting one
        inline would hold something up: a migration's destination that just resumed)."""
        self._nudged.set()

    async def keep_all(self, vms: Callable[[], list[ManagedVM]]) -> None:
        """Every ``renew_s``, or at once when nudged: ``keep`` each of ``vms()`` (a migration
        that failed on its own leaves its source without a guardian; a guardian may have
        died). A VM that an operation holds (its lock) waits for the next round."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.renew_s):
                    await self._nudged.wait()
            self._nudged.clear()
            for vm in vms():
                if vm.lock.locked():
                    continue
                try:
                    async with vm.lock:
                        await self.keep(vm)
                except Exception:
                    log.exception("%s: guardian check failed", vm.name)

    def _lock(self, vm: ManagedVM) -> asyncio.Lock:
        return self._locks.setdefault(vm.spec.uuid, asyncio.Lock())

    async def _start(self, vm: ManagedVM, lease_file: Path) -> None:
        runtime = vm.runtime.directory
        argv = [self.python, "-I", str(GUARDIAN_FILE), "--name", vm.name,
                "--uuid", vm.spec.uuid, "--host", self.host,
                "--generation", str(vm.generation), "--qemu-pid", str(vm.pid),
                "--lease-file", str(lease_file), "--runtime-dir", str(runtime),
                "--duration", repr(self.duration_s), "--renew", repr(self.renew_s)]
        log_path = runtime / guardian.LOG
        try:
            rc = await _launch(argv, log_path)
        except OSError as err:
            raise Unavailable("GUARDIAN_START_FAILED",
                              f"the lease guardian of {vm.name} cannot be started: {err}",
                              f"check {runtime} and {self.python}") from err
        pid = process.read_pid(runtime / guardian.PIDFILE)
        if rc != 0 or pid is None:
            raise Unavailable("GUARDIAN_START_FAILED",
                              f"the lease guardian of {vm.name} did not start "
                              f"({'no answer' if rc is None else f'exit {rc}'}): "
                              f"{log_tail(log_path, 1)}",
                              f"see {log_path}; without it the VM is not stopped if this "
                              "agent dies")
        log.info("%s: guardian pid %d guards QEMU pid %s at generation %s", vm.name, pid,
                 vm.pid, vm.generation)


async def _launch(argv: list[str], log_path: Path) -> int | None:
    """Run the guardian's launcher (output to ``log_path``) until it says the guardian
    guards or cannot; its exit status, None if it did not answer in time."""
    with log_path.open("ab") as out:
        launcher = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True, cwd="/")
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                return await launcher.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                launcher.kill()
            return None
