"""QEMU processes: launch daemonized, find by pidfile, check identity, terminate.

A QEMU started here outlives its parent (``-daemonize``), so a restarted agent finds it
again through its pidfile and checks with ``/proc/<pid>/cmdline`` that the pid is still
that VM's QEMU, never a recycled pid. Errors: ``QEMULaunchFailed`` (Unavailable).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from segue.domain.errors import Unavailable
from segue.files import log_tail
from segue.procs import pid_alive as pid_alive  # the one liveness test, re-exported


class QEMULaunchFailed(Unavailable):
    """QEMU exited with an error before it daemonized."""


async def launch_daemon(argv: list[str], log_path: Path, pidfile: Path,
                        timeout: float = 60.0) -> int:
    """Run a ``-daemonize`` QEMU argv; returns the daemon's pid.

    Raises QEMULaunchFailed with QEMU's own message if it exits non-zero or has no pidfile.
    """
    pidfile.unlink(missing_ok=True)
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(timeout):
                rc = await proc.wait()
        except TimeoutError as err:
            proc.kill()
            raise QEMULaunchFailed("QEMU_LAUNCH_FAILED", f"QEMU did not start in {timeout:.0f} s",
                                   "see the VM's qemu.log") from err
    pid = read_pid(pidfile)
    if rc != 0 or pid is None:
        raise QEMULaunchFailed(
            "QEMU_LAUNCH_FAILED", f"QEMU failed to start (exit {rc}): {log_tail(log_path)}",
            "fix the cause QEMU names; the VM was not started",
        )
    return pid


def read_pid(pidfile: Path) -> int | None:
    """The pid in a pidfile, or None if there is none or it is garbage."""
    try:
        return int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_qemu_of(pid: int, vm_uuid: str) -> bool:
    """True if pid is a live QEMU started for the VM with this uuid."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return (pid_alive(pid) and bool(args) and b"qemu-system" in args[0]
            and vm_uuid.encode() in args)


def cmdline_option(pid: int, option: str) -> str | None:
    """The value the process was started with for ``option`` (``-cpu`` -> ``max,enforce``),
    or None if the process is gone or has no such option."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    values = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == option]
    return values[-1] if values else None


async def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for pid to exit; True if it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        await asyncio.sleep(0.02)
    return not pid_alive(pid)


async def kill_hard(pid: int, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns when the pid is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if await wait_exit(pid, wait):
            return
