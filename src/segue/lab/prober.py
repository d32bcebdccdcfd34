"""External UDP prober: measures guest blackout from outside the guest.

Guest protocol (ASCII datagrams, UDP port 7777 by default): the prober sends ``PING <seq>``,
the guest answers ``PONG <seq> <boot_id> <reply_no> <uptime_ms> <pass> <errors>``; ``VERIFY``
is answered with one line of the guest checker's verdict.

``longest_gap_ms`` is the longest time without a reply, over three kinds of interval: probe
start to the first reply, between consecutive replies (by arrival time), and the last reply to
the last ping sent (so a guest that stops answering for good shows up). With no reply at all it
is the whole sending period. Times are taken from a monotonic clock; ``gap_start_wall`` /
``gap_end_wall`` map them onto wall-clock time to line up with QMP event timestamps.

``python -m segue.lab.prober --ip X [--port P] [--seconds S] [--json]`` runs a probe and prints
the result; ``--verify`` prints the VERIFY reply. Errors: ``Unavailable`` (``GUEST_NO_REPLY``)
when VERIFY gets no answer.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from segue.domain.errors import Unavailable
from segue.image import protocol
from segue.image.protocol import Pong

DEFAULT_PORT = 7777
GRACE_S = 0.5  # how long to wait for late replies after the last ping


@dataclass(frozen=True)
class Sample:
    """One ping: when it was sent, when its first reply arrived (None if lost), its seq."""

    send_time: float
    recv_time: float | None
    seq: int


@dataclass(frozen=True)
class GapStats:
    """Longest reply gap (ms) with its start and end (monotonic seconds), and max RTT (ms)."""

    longest_gap_ms: float
    gap_start: float
    gap_end: float
    max_rtt_ms: float


@dataclass
class ProbeResult:
    """What one probe saw. ``boot_ids`` in order of first sight: more than one = reboot.
    ``gap_*_ms`` are offsets from the probe start; ``malformed`` counts datagrams that were
    not a PONG to one of our pings; ``guest_pass``/``guest_errors`` come from the last PONG."""

    ip: str
    port: int
    sent: int
    received: int
    lost: int
    longest_gap_ms: float
    gap_start_ms: float
    gap_end_ms: float
    gap_start_wall: float
    gap_end_wall: float
    max_rtt_ms: float
    duration_s: float
    interval_ms: float
    boot_ids: list[str] = field(default_factory=list)
    guest_errors: int = 0
    guest_pass: int = 0
    malformed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_gaps(samples: Sequence[Sample], start: float, end: float) -> GapStats:
    """Longest interval without a reply, over start → first reply, reply → next reply and
    last reply → ``end`` (time of the last ping sent); see the module docstring."""
    arrivals = sorted(s.recv_time for s in samples if s.recv_time is not None)
    rtts = [s.recv_time - s.send_time for s in samples if s.recv_time is not None]
    max_rtt_ms = max(rtts, default=0.0) * 1000.0
    edges = [start, *arrivals]
    if not arrivals or arrivals[-1] < end:
        edges.append(end)
    best = (0.0, start, start)
    for before, after in itertools.pairwise(edges):
        if after - before > best[0]:
            best = (after - before, before, after)
    return GapStats(best[0] * 1000.0, best[1], best[2], max_rtt_ms)


def parse_pong(data: bytes) -> Pong | None:
    """The guest's PONG (``segue.image.protocol.parse_pong``), or None for anything else: a
    prober counts what it can read and ignores the rest."""
    try:
        return protocol.parse_pong(data)
    except ValueError:
        return None


class _Probe:
    """The I/O side of one probe: sends on a fixed schedule, drains replies in between."""

    def __init__(self, ip: str, port: int, interval_s: float) -> None:
        self.addr = (ip, port)
        self.interval = interval_s
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.send_times: dict[int, float] = {}
        self.recv_times: dict[int, float] = {}
        self.boot_ids: list[str] = []
        self.last_reply: Pong | None = None
        self.malformed = 0
        self.stop_requested: Callable[[], bool] = lambda: False

    def close(self) -> None:
        self.selector.close()
        self.sock.close()

    def send(self, seq: int) -> None:
        self.send_times[seq] = time.monotonic()
        # a failed send (no route, full buffer, queued ICMP error) counts as sent and lost
        with contextlib.suppress(OSError):
            self.sock.sendto(f"PING {seq}".encode(), self.addr)

    def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the socket, then read every queued datagram."""
        if not self.selector.select(max(timeout, 0.0)):
            return
        while True:
            try:
                data = self.sock.recv(512)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error queued on the socket
            self._record(data, time.monotonic())

    def _record(self, data: bytes, now: float) -> None:
        reply = parse_pong(data)
        if reply is None or reply.seq not in self.send_times:
            self.malformed += 1
            return
        self.recv_times.setdefault(reply.seq, now)
        if reply.boot_id not in self.boot_ids:
            self.boot_ids.append(reply.boot_id)
        self.last_reply = reply

    def run(self, seconds: float) -> tuple[float, float]:
        """Ping every interval for ``seconds`` without drift (slots missed while late are
        skipped, never sent in a burst), then wait GRACE_S for replies; returns (start, end)."""
        start = time.monotonic()
        stop, seq = start + seconds, 0
        while (due := start + seq * self.interval) < stop and not self.stop_requested():
            self.drain(due - time.monotonic())
            if time.monotonic() >= due:
                self.send(seq)
                seq = max(seq + 1, int((time.monotonic() - start) / self.interval))
        end = max(self.send_times.values(), default=start)
        grace_end = time.monotonic() + GRACE_S
        while (left := grace_end - time.monotonic()) > 0:
            self.drain(left)
        return start, end

    def samples(self) -> list[Sample]:
        return [Sample(t, self.recv_times.get(seq), seq) for seq, t in self.send_times.items()]


def probe(
    ip: str, port: int = DEFAULT_PORT, seconds: float = 10.0, interval_ms: float = 1.5,
    stop: Callable[[], bool] | None = None,
) -> ProbeResult:
    """Ping the guest at ``ip:port`` every ``interval_ms`` for ``seconds`` and measure the
    longest gap between replies (see the module docstring). Never raises for a silent guest:
    it reports everything lost."""
    wall0, mono0 = time.time(), time.monotonic()
    runner = _Probe(ip, port, interval_ms / 1000.0)
    if stop is not None:
        runner.stop_requested = stop
    try:
        start, end = runner.run(seconds)
    finally:
        runner.close()
    gaps = compute_gaps(runner.samples(), start, end)
    last = runner.last_reply
    return ProbeResult(
        ip=ip,
        port=port,
        sent=len(runner.send_times),
        received=len(runner.recv_times),
        lost=len(runner.send_times) - len(runner.recv_times),
        longest_gap_ms=gaps.longest_gap_ms,
        gap_start_ms=(gaps.gap_start - start) * 1000.0,
        gap_end_ms=(gaps.gap_end - start) * 1000.0,
        gap_start_wall=wall0 + (gaps.gap_start - mono0),
        gap_end_wall=wall0 + (gaps.gap_end - mono0),
        max_rtt_ms=gaps.max_rtt_ms,
        duration_s=end - start,
        interval_ms=interval_ms,
        boot_ids=runner.boot_ids,
        guest_errors=last.errors if last else 0,
        guest_pass=last.passes if last else 0,
        malformed=runner.malformed,
    )


def verify(ip: str, port: int = DEFAULT_PORT, attempts: int = 5, timeout: float = 1.0) -> str:
    """Send ``VERIFY`` (up to ``attempts`` times, ``timeout`` s each) and return the guest's
    reply line, stripped. Raises Unavailable (``GUEST_NO_REPLY``) if none comes.

    A verification that takes longer than ``timeout`` (a big guest, a disk journal read back)
    is still running when the request is sent again; the guest answers the extra requests
    ``ERR busy`` once it runs its most, and those are skipped while the first one's answer is
    awaited."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        for _ in range(attempts):
            try:
                sock.sendto(b"VERIFY", (ip, port))
                while True:
                    data = sock.recv(4096)
                    # a late PONG from an earlier probe, or a repeat the guest is too busy for
                    if not data.startswith(b"PONG ") and data.strip() != b"ERR busy":
                        return data.decode("ascii", "replace").strip()
            except (TimeoutError, ConnectionRefusedError):
                continue
    raise Unavailable(
        "GUEST_NO_REPLY",
        f"the guest at {ip}:{port} did not answer VERIFY ({attempts} tries)",
        "check that the VM runs and its network is up (segue vm show)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: probe (or ``--verify``) and print the result; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m segue.lab.prober")
    parser.add_argument("--ip", required=True)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval-ms", type=float, default=1.5)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--verify", action="store_true", help="send VERIFY, print the reply")
    args = parser.parse_args(argv)
    if args.verify:
        try:
            print(verify(args.ip, args.port))
        except Unavailable as err:
            print(str(err), file=sys.stderr)
            return 1
        return 0
    # SIGTERM/SIGINT end the probe early and still print its result: a caller probes
    # "for as long as something takes" by starting it long and signalling it when done.
    stopped: list[bool] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.append(True))
    result = probe(args.ip, args.port, args.seconds, args.interval_ms,
                   stop=lambda: bool(stopped))
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(
            f"sent {result.sent} received {result.received} lost {result.lost} "
            f"longest gap {result.longest_gap_ms:.1f} ms max rtt {result.max_rtt_ms:.1f} ms "
            f"boot ids {','.join(result.boot_ids) or '-'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
