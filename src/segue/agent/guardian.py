"""The lease guardian: a small watchdog process per running VM that stops its QEMU before the
VM's lease expires when nobody renews it, whether or not the agent is alive.

Why: a VM's lease (``segue.agent.leases``) is renewed by the host's agent; an agent that
cannot renew stops the VM itself (``fence_after``), but an agent that is gone (crashed,
OOM-killed, SIGKILLed) renews nothing and stops nothing, while its QEMUs (each in its own
session) run on. Once the lease expires another host may start the VM: two instances. The
guardian closes that gap. It is started by the agent (``segue.agent.guardians``) for every
VM whose lease this host holds, in its own session, so it outlives the agent; it depends on
nothing but the lease file and the QEMU process: no agent, no network, no QMP.

Its loop, every ``poll_interval`` (1 s by default, never more than a third of the margin):

- QEMU gone: exit (a pidfd follows the process, so a recycled pid is never mistaken for it;
  ``/proc/<pid>/cmdline`` must hold the VM's uuid when the guardian starts);
- read the lease file (the agent writes it by atomic rename), in a thread waited for at most
  half an interval; a missing, torn or unreadable file, or storage that does not answer (a
  hung NFS mount), tells nothing new: the last record read stands, so a lease nobody can
  renew (the storage is gone) is acted on at its last known expiry;
- ``decide`` (pure): keep it running; kill it (the lease is not this host's at the guarded
  generation, or it expires within ``guard_margin``); or leave it and exit (the lease was
  taken over from this generation by a migration's destination, or this host claimed it
  again at a newer generation, for which its agent starts a new guardian).

The margin is half of what the agent's own fence point (``fence_after``) leaves of the lease:
``guard_margin = (lease_duration_s - fence_after) / 2``, 3 s with the defaults (15 s lease,
3 s renewals, the agent fences at 9 s): the guardian acts 12 to 13 s after the last renewal,
after a live agent that cannot renew has stopped the VM itself, and 2 s or more before
another host may claim the lease. It compares the lease's expiry with this host's clock, the
clock the agent wrote it with.

Killing is ``SIGKILL``, not a pause (``SIGSTOP``, or QMP ``stop``, which needs the agent's
QMP session anyway): a frozen QEMU keeps its disks' image locks (and its memory), so the host
that claims the VM next could not open its disks, and a stray ``SIGCONT`` would run a guest
whose lease is another host's. A killed guest loses what it had not written, as on a power
loss, which is what a host that stops renewing its leases is to the rest of the cluster.
Before the kill the guardian writes ``guardian-fenced.json`` in the VM's runtime directory
(when, why, the lease it saw), so the agent reports the VM as fenced with that reason (also
after a restart), and logs to ``guardian.log`` there.

One guardian per VM: it holds an exclusive ``flock`` on ``guardian.pid`` (its pid) in the
runtime directory for its whole life; a second one for the same VM refuses to start. The agent
stops it (SIGTERM: it exits and leaves QEMU alone) when the VM is stopped, destroyed or
released, and when it hands the VM over to a migration's destination.

It runs as ``python -I .../segue/agent/guardian.py --uuid ... `` and imports only the
standard library (it must stay cheap: one runs per VM); ``main`` daemonizes like QEMU's
``-daemonize`` (the launcher exits 0 once the guardian guards, 1 with the reason on stderr
if it cannot). Errors: ``GuardianError`` (at start only: not the VM's QEMU, already guarded).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import sys
import threading
import time
from enum import Enum
from typing import NamedTuple

PIDFILE = "guardian.pid"
RECORD = "guardian-fenced.json"
LOG = "guardian.log"
MAX_POLL_S = 1.0
KILL_WAIT_S = 10.0


def fence_after(duration_s: float, renew_s: float) -> float:
    """Seconds without a successful renewal after which the agent stops a VM: two renewals
    short of the lease's expiry, and at most 80 % of it (the kill, and a clock a little
    ahead on the claiming host, must still fit before it expires)."""
    return min(duration_s - 2 * renew_s, 0.8 * duration_s)


def guard_margin(duration_s: float, renew_s: float) -> float:
    """How long before the lease's expiry the guardian kills a VM whose lease was not
    renewed: half of what the agent's fence point leaves (3 s of a 15 s lease renewed every
    3 s), so a live agent acts first and the guardian still acts before the expiry."""
    return (duration_s - fence_after(duration_s, renew_s)) / 2


def poll_interval(duration_s: float, renew_s: float) -> float:
    """Seconds between two looks at the lease: 1 s, or a third of the margin if less."""
    return min(MAX_POLL_S, guard_margin(duration_s, renew_s) / 3)


class GuardianError(Exception):
    """The guardian cannot guard this VM (said at start, before it daemonizes)."""


class LeaseSeen(NamedTuple):
    """What the guardian reads of a VM's lease file (the fields of ``leases.Lease`` it
    needs)."""

    host: str
    generation: int
    expires_at: float
    released: bool = False
    previous_host: str | None = None

    def describe(self, now: float) -> str:
        state = "released" if self.released else f"expiring in {self.expires_at - now:.1f} s"
        return f"{self.host}'s at generation {self.generation}, {state}"


class Action(Enum):
    KEEP = "keep"  # the lease is held and renewed: look again later
    KILL = "kill"  # the guest must not run any more: SIGKILL its QEMU
    LEAVE = "leave"  # not this guardian's business any more: exit, QEMU left alone


class Decision(NamedTuple):
    action: Action
    reason: str = ""


def decide(lease: LeaseSeen, now: float, host: str, generation: int, margin: float
           ) -> Decision:
    """What to do with the QEMU of a VM this ``host`` ran at ``generation``, given its lease
    as last read (see the module doc). Pure."""
    if lease.host == host and lease.generation == generation:
        if lease.released:
            return Decision(Action.KILL, f"its lease was released ({lease.describe(now)})")
        left = lease.expires_at - now
        if left <= margin:
            when = f"expires in {left:.1f} s" if left > 0 else f"expired {-left:.1f} s ago"
            return Decision(Action.KILL, f"its lease {when} and was not renewed (the agent is "
                                         "gone or cannot reach the storage)")
        return Decision(Action.KEEP)
    if lease.host == host and lease.generation > generation and not lease.released:
        return Decision(Action.LEAVE, f"this host claimed it again at generation "
                                      f"{lease.generation}: its agent guards that claim")
    if lease.previous_host == host and lease.generation == generation + 1:
        return Decision(Action.LEAVE, f"its lease was taken over by {lease.host} (a "
                                      f"migration's destination): this QEMU is the migrated-"
                                      "away source, which never runs the guest again")
    return Decision(Action.KILL, f"its lease is {lease.describe(now)}, not this host's at "
                                 f"generation {generation}")


def parse_lease(text: str) -> LeaseSeen | None:
    """A lease file's content, or None if it is torn or not a lease."""
    try:
        data = json.loads(text)
        return LeaseSeen(host=str(data["host"]), generation=int(data["generation"]),
                         expires_at=float(data["expires_at"]),
                         released=bool(data.get("released", False)),
                         previous_host=data.get("previous_host"))
    except (ValueError, TypeError, KeyError):
        return None


def read_lease(path: str) -> LeaseSeen | None:
    """The lease file's record, or None (missing, torn, unreadable: nothing new)."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_lease(f.read())
    except (OSError, UnicodeDecodeError):
        return None


class LeaseReader:
    """Reads the lease file in a thread of its own and waits a bounded time for it: storage
    that hangs (an NFS server gone under a hard mount) never holds the guardian up; it sees
    nothing new, and the last record stands. At most one read is under way."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pending: threading.Thread | None = None
        self._answer: list[LeaseSeen | None] = []

    def read(self, timeout: float) -> LeaseSeen | None:
        """The lease's record, or None (unreadable, torn, or no answer within ``timeout``
        s: a read that hangs is waited for again at the next call)."""
        if self._pending is None:
            answer: list[LeaseSeen | None] = []
            self._answer = answer
            self._pending = threading.Thread(
                target=lambda: answer.append(read_lease(self.path)), daemon=True)
            self._pending.start()
        self._pending.join(timeout)
        if self._pending.is_alive():
            return None
        self._pending = None
        return self._answer[0] if self._answer else None


def is_qemu_of(pid: int, uuid: str) -> bool:
    """True if ``pid`` is a QEMU started with the VM's uuid (as ``segue.qemu.process``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return bool(args) and b"qemu-system" in args[0] and uuid.encode() in args


class Qemu:
    """The guarded QEMU process, followed by a pidfd (by pid and cmdline where the kernel
    has no pidfds)."""

    def __init__(self, pid: int, uuid: str) -> None:
        self.pid, self.uuid = pid, uuid
        try:
            self.pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            raise GuardianError(f"pid {pid} does not run") from None
        except OSError:
            self.pidfd = None
        # checked after the pidfd is open: the process it follows is the VM's QEMU
        if not is_qemu_of(pid, uuid) or self.exited(0):
            raise GuardianError(f"pid {pid} is not a running QEMU of VM {uuid}")

    def exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the QEMU to exit; whether it has."""
        if self.pidfd is None:
            deadline = time.monotonic() + timeout
            while is_qemu_of(self.pid, self.uuid):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(min(0.1, timeout))
            return True
        return bool(select.select([self.pidfd], [], [], timeout)[0])

    def kill(self) -> None:
        """SIGKILL the QEMU (only the process the guardian started with)."""
        with contextlib.suppress(ProcessLookupError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            elif is_qemu_of(self.pid, self.uuid):
                os.kill(self.pid, signal.SIGKILL)


class Watch(NamedTuple):
    """What one guardian guards: the VM, the claim, the files (paths), the timing."""

    name: str
    uuid: str
    host: str
    generation: int
    qemu_pid: int
    lease_file: str
    runtime: str
    duration_s: float
    renew_s: float

    @property
    def margin(self) -> float:
        return guard_margin(self.duration_s, self.renew_s)


def log(watch: Watch, message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} guardian[{os.getpid()}] {watch.name} ({watch.host}, generation "
          f"{watch.generation}): {message}", file=sys.stderr, flush=True)


def write_record(watch: Watch, reason: str, lease: LeaseSeen, now: float) -> None:
    """``guardian-fenced.json`` in the runtime dir (never created here if it is gone)."""
    record = {"at": now, "host": watch.host, "generation": watch.generation,
              "qemu_pid": watch.qemu_pid, "reason": reason,
              "lease": {"host": lease.host, "generation": lease.generation,
                        "expires_at": lease.expires_at, "released": lease.released}}
    tmp = os.path.join(watch.runtime, f".{RECORD}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, os.path.join(watch.runtime, RECORD))
    except OSError as err:
        log(watch, f"record not written: {err}")


def guard(watch: Watch, qemu: Qemu, wakeup: int, started: float) -> Action:
    """The loop (see the module doc) until QEMU exits, the guardian is told to stop (a byte
    on ``wakeup``: SIGTERM), or it decides; what ended it (KEEP: QEMU exited or stopped)."""
    # Never read a record yet: the agent started this guardian right after it claimed,
    # renewed or read the lease, so it expires ``duration_s`` after the start at the latest.
    known = LeaseSeen(watch.host, watch.generation, started + watch.duration_s)
    unreadable = False
    interval = poll_interval(watch.duration_s, watch.renew_s)
    reader = LeaseReader(watch.lease_file)
    while True:
        seen = reader.read(timeout=interval / 2)
        if (seen is None) != unreadable:
            unreadable = seen is None
            log(watch, "lease file unreadable (or its storage does not answer): its last "
                       "record stands" if unreadable else "lease file readable again")
        known = seen or known
        now = time.time()
        decision = decide(known, now, watch.host, watch.generation, watch.margin)
        if decision.action is not Action.KEEP:
            if qemu.exited(0):
                return Action.KEEP  # gone meanwhile: nothing to do, nothing to record
            if decision.action is Action.KILL:
                write_record(watch, decision.reason, known, now)
                qemu.kill()
                gone = qemu.exited(KILL_WAIT_S)
                log(watch, f"killed QEMU pid {watch.qemu_pid}: {decision.reason}"
                    + ("" if gone else f"; still there after {KILL_WAIT_S:.0f} s"))
            else:
                log(watch, f"leaving QEMU pid {watch.qemu_pid} alone: {decision.reason}")
            return decision.action
        ready = select.select([qemu.pidfd, wakeup] if qemu.pidfd is not None else [wakeup],
                              [], [], interval)[0]
        if wakeup in ready or qemu.exited(0):
            return Action.KEEP


def lock_pidfile(runtime: str) -> int:
    """Hold ``guardian.pid`` (flock) and write this process's pid in it; its fd. Raises
    GuardianError if another guardian holds it."""
    path = os.path.join(runtime, PIDFILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise GuardianError(f"the VM is guarded already (guardian pid {other})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


USAGE = ("usage: guardian.py --name VM --uuid UUID --host HOST --generation N --qemu-pid PID "
         "--lease-file PATH --runtime-dir DIR --duration SECONDS --renew SECONDS")
FLAGS = ("--name", "--uuid", "--host", "--generation", "--qemu-pid", "--lease-file",
         "--runtime-dir", "--duration", "--renew")  # Watch's fields, in order


def parse_args(argv: list[str]) -> Watch:
    """The command line (every flag once, with its value; no argparse: one guardian runs per
    VM and stays small). Raises GuardianError."""
    values = dict(zip(argv[::2], argv[1::2], strict=False))
    if len(argv) != 2 * len(FLAGS) or sorted(values) != sorted(FLAGS):
        raise GuardianError(USAGE)
    try:
        return Watch(values["--name"], values["--uuid"], values["--host"],
                     int(values["--generation"]), int(values["--qemu-pid"]),
                     values["--lease-file"], values["--runtime-dir"],
                     float(values["--duration"]), float(values["--renew"]))
    except ValueError as err:
        raise GuardianError(f"{err}; {USAGE}") from None


def serve(watch: Watch, ready: int) -> int:
    """The daemon: take the pidfile, follow the QEMU, tell the launcher (a line on
    ``ready``), guard; the exit status."""
    started = time.time()
    try:
        pidfile = lock_pidfile(watch.runtime)
        qemu = Qemu(watch.qemu_pid, watch.uuid)
    except (GuardianError, OSError) as err:
        os.write(ready, f"error: {err}\n".encode())
        return 2
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)  # the wakeup fd ends the wait
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log(watch, f"guarding QEMU pid {watch.qemu_pid} (lease {watch.lease_file}, kills "
               f"{watch.margin:.1f} s before an unrenewed expiry)")
    os.write(ready, b"ready\n")
    os.close(ready)
    action = guard(watch, qemu, wake_r, started)
    if action is Action.KEEP:
        log(watch, "QEMU exited" if qemu.exited(0) else "stopped")
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(watch.runtime, PIDFILE))
    os.close(pidfile)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Daemonize and guard; the launcher's exit status (0: guarding; 1: it cannot guard,
    why on stderr; 2: a wrong command line)."""
    try:
        watch = parse_args(sys.argv[1:] if argv is None else argv)
    except GuardianError as err:
        print(f"segue-guardian: {err}", file=sys.stderr)
        return 2
    ready_r, ready_w = os.pipe()
    if os.fork() > 0:  # the launcher: wait until the daemon guards, or says why not
        os.close(ready_w)
        with os.fdopen(ready_r) as answer:
            line = answer.readline().strip()
        if line == "ready":
            return 0
        print(f"segue-guardian: {watch.name}: {line or 'the guardian died at start'}",
              file=sys.stderr)
        return 1
    os.close(ready_r)
    os.chdir("/")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    os._exit(serve(watch, ready_w))


if __name__ == "__main__":
    sys.exit(main())
