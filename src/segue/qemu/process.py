"""QEMU processes: launch detached, find by pidfile, check identity, terminate.

A QEMU started here outlives the agent: it runs in its own session, with no terminal, its
working directory ``/`` and umask 027, as ``-daemonize`` would leave it; ``-daemonize``
itself cannot be used, because QEMU's seccomp filter (``-sandbox ...,spawn=deny,
elevateprivileges=deny``, see ``segue.qemu.argv``) is in place before it would fork and call
setsid. QEMU is ready when its QMP socket greets. A restarted agent finds it again through
its pidfile and checks with ``/proc/<pid>/cmdline`` that the pid is still that VM's QEMU,
never a recycled pid. Errors: ``QEMULaunchFailed`` (Unavailable).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

from segue.domain.errors import Unavailable
from segue.files import log_tail
from segue.procs import pid_alive as pid_alive  # the one liveness test, re-exported

# Runs QEMU as -daemonize would leave it (umask, directory); exec keeps the pid.
_DETACH = 'umask 027 && cd / && exec "$@"'


class QEMULaunchFailed(Unavailable):
    """QEMU exited with an error, or did not greet on its QMP socket in time."""


async def launch_daemon(argv: list[str], log_path: Path, pidfile: Path, qmp_socket: Path,
                        timeout: float = 60.0) -> int:
    """Start a QEMU argv (``-pidfile pidfile``, ``-qmp unix:qmp_socket,server=on,wait=off``,
    no ``-daemonize``) detached from the agent, its output appended to ``log_path``; returns
    its pid once its QMP socket greets and answers.

    Raises QEMULaunchFailed with QEMU's own message if it exits first, or if it does not
    greet within ``timeout`` s (it is then killed).
    """
    pidfile.unlink(missing_ok=True)
    qmp_socket.unlink(missing_ok=True)  # a stale socket of an earlier QEMU would refuse
    pid = _spawn_detached(argv, log_path)
    try:
        async with asyncio.timeout(timeout):
            while not await _greets(qmp_socket):
                if (rc := _exit_status(pid)) is not None:
                    raise QEMULaunchFailed(
                        "QEMU_LAUNCH_FAILED",
                        f"QEMU failed to start (exit {rc}): {log_tail(log_path)}",
                        "fix the cause QEMU names; the VM was not started")
                await asyncio.sleep(0.02)
    except TimeoutError as err:
        await kill_hard(pid)
        raise QEMULaunchFailed("QEMU_LAUNCH_FAILED", f"QEMU did not start in {timeout:.0f} s",
                               "see the VM's qemu.log") from err
    return pid


def _spawn_detached(argv: list[str], log_path: Path) -> int:
    sh = shutil.which("sh") or "/bin/sh"
    with log_path.open("ab") as log:
        return os.posix_spawn(
            sh, [sh, "-c", _DETACH, "qemu", *argv], os.environ, setsid=True,
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                          (os.POSIX_SPAWN_DUP2, log.fileno(), 1),
                          (os.POSIX_SPAWN_DUP2, log.fileno(), 2)])


async def _greets(qmp_socket: Path) -> bool:
    """True once a QMP server on the socket greets and answers a command: QEMU has then
    finished its start (a greeting alone can come before QEMU has loaded the kernel and
    given up on it: commands are answered only from its main loop)."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(qmp_socket))
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    try:
        if not (await reader.readline()).startswith(b'{"QMP"'):
            return False
        writer.write(b'{"execute": "qmp_capabilities"}\n')
        await writer.drain()
        return b'"return"' in await reader.readline()
    except ConnectionError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _exit_status(pid: int) -> int | None:
    """The exit code of our child ``pid`` once it has exited (reaping it), else None."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere (pid_alive reaps our zombies)
        return None if pid_alive(pid) else -1
    return os.waitstatus_to_exitcode(status) if reaped == pid else None


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
