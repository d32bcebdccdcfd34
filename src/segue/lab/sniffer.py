"""Lab sniffer: when did a VM's announce, its prober's pings and its replies pass a bridge?

Run inside one lab namespace (a host's, or the switch's), never in the root namespace:
``ip netns exec <ns> python -m segue.lab.sniffer --iface br-vm-net --mac M --ip I --port 7777``.
It captures on ``--iface`` with an AF_PACKET raw socket (root) until SIGTERM/SIGINT, then
prints one JSON object: ``{"iface", "mac", "ip", "port", "frames", "clock",
"tracks": {kind: track}}`` with kinds

- ``rarp``: RARP frames (ethertype 0x8035) whose sender hardware address is the VM's MAC
  (QEMU's self-announce after a migration),
- ``garp``: ARP frames whose sender hardware address is the VM's MAC (the guest's own
  announce, when virtio's guest-announce is negotiated),
- ``ping``: UDP/IPv4 to the VM's ``ip:port`` (the prober's pings),
- ``reply``: UDP/IPv4 from the VM's ``ip:port`` (the guest's answers).

A track is ``{"count", "first", "last", "gaps": [[before, after], ...]}`` (epoch seconds):
``gaps`` are the ``--keep-gaps`` longest intervals between consecutive frames of that kind,
longest first, so memory stays bounded however long it runs; ``segue.lab.blackout`` reads it.

Timestamps are the kernel's receive timestamps (``SO_TIMESTAMPNS``, CLOCK_REALTIME, the clock
QEMU stamps QMP events with), taken when the frame entered the namespace's stack: they do not
include the time this Python process waited for the CPU, which under TCG guests can be
milliseconds. Should the kernel give none, ``time.time()`` at return from recv is used and
``clock`` says ``"user"`` (else ``"kernel"``).

The bridge is put into promiscuous mode through a packet-socket membership (dropped with the
socket) because a bridge passes forwarded unicast frames up to its own taps only when it is
promiscuous; nothing else about the namespace is changed.
"""

from __future__ import annotations

import argparse
import heapq
import json
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_RARP = 0x8035
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
SO_TIMESTAMPNS = 35  # Linux; not exported by Python's socket module
KINDS = ("rarp", "garp", "ping", "reply")
DEFAULT_KEEP_GAPS = 32


@dataclass
class Track:
    """Arrival times of one kind of frame, bounded: count, first, last and the ``keep``
    longest gaps between consecutive arrivals (as (before, after) pairs).

    Arrivals must be fed in non-decreasing time order (kernel stamps on one socket are)."""

    keep: int = DEFAULT_KEEP_GAPS
    count: int = 0
    first: float | None = None
    last: float | None = None
    _gaps: list[tuple[float, float, float]] = field(default_factory=list)  # min-heap by length

    def add(self, t: float) -> None:
        """Record one arrival at ``t`` (epoch seconds)."""
        if self.last is not None:
            gap = (t - self.last, self.last, t)
            if len(self._gaps) < self.keep:
                heapq.heappush(self._gaps, gap)
            elif gap[0] > self._gaps[0][0]:
                heapq.heapreplace(self._gaps, gap)
        if self.first is None:
            self.first = t
        self.last = t
        self.count += 1

    def to_dict(self) -> dict[str, Any]:
        gaps = sorted(self._gaps, reverse=True)
        return {"count": self.count, "first": self.first, "last": self.last,
                "gaps": [[before, after] for _, before, after in gaps]}


def parse_mac(mac: str) -> bytes:
    """``"52:54:00:aa:bb:cc"`` -> 6 bytes. Raises ValueError on anything else."""
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def classify(frame: bytes, mac: bytes, ip: bytes, port: int) -> str | None:
    """The kind (one of KINDS) of an Ethernet frame, or None if it is none of them.

    ``mac`` is the VM's MAC (6 bytes), ``ip`` its IPv4 address (4 bytes)."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype in (ETH_P_RARP, ETH_P_ARP):
        # ARP/RARP body: htype(2) ptype(2) hlen(1) plen(1) op(2) sender-hw(6) ...
        if len(frame) >= 28 and frame[22:28] == mac:
            return "rarp" if ethertype == ETH_P_RARP else "garp"
        return None
    if ethertype != ETH_P_IP or len(frame) < 34 or frame[23] != socket.IPPROTO_UDP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    if len(frame) < 14 + ihl + 4:
        return None
    sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
    if frame[30:34] == ip and dport == port:
        return "ping"
    if frame[26:30] == ip and sport == port:
        return "reply"
    return None


def _kernel_stamp(ancdata: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("qq", data)
            return float(sec) + float(nsec) / 1e9
    return None


class Sniffer:
    """One AF_PACKET socket on ``iface`` (promiscuous while open) and the tracks it fills."""

    def __init__(self, iface: str, mac: str, ip: str, port: int,
                 keep_gaps: int = DEFAULT_KEEP_GAPS) -> None:
        self.iface, self.mac_text, self.ip_text, self.port = iface, mac, ip, port
        self.mac, self.ip = parse_mac(mac), socket.inet_aton(ip)
        self.tracks = {kind: Track(keep_gaps) for kind in KINDS}
        self.frames = 0
        self.user_stamps = 0
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind((iface, ETH_P_ALL))
        mreq = struct.pack("iHH8s", socket.if_nametoindex(iface), PACKET_MR_PROMISC, 0, b"")
        self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        self.sock.settimeout(0.2)

    def run(self, stopped: list[bool]) -> None:
        """Capture until ``stopped`` is non-empty (checked at least every 0.2 s)."""
        cmsg_size = socket.CMSG_SPACE(16)
        while not stopped:
            try:
                frame, ancdata, _, _ = self.sock.recvmsg(128, cmsg_size)
            except TimeoutError:
                continue
            stamp = _kernel_stamp(ancdata)
            if stamp is None:
                stamp, self.user_stamps = time.time(), self.user_stamps + 1
            self.frames += 1
            kind = classify(frame, self.mac, self.ip, self.port)
            if kind is not None:
                self.tracks[kind].add(stamp)

    def result(self) -> dict[str, Any]:
        """The JSON-ready result (see the module docstring)."""
        return {"iface": self.iface, "mac": self.mac_text, "ip": self.ip_text,
                "port": self.port, "frames": self.frames,
                "clock": "user" if self.user_stamps else "kernel",
                "tracks": {kind: track.to_dict() for kind, track in self.tracks.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: sniff until SIGTERM/SIGINT, then print the result as JSON. Prints
    ``listening`` on stderr once the socket is bound (callers wait for it)."""
    parser = argparse.ArgumentParser(prog="python -m segue.lab.sniffer")
    parser.add_argument("--iface", required=True)
    parser.add_argument("--mac", required=True)
    parser.add_argument("--ip", required=True)
    parser.add_argument("--port", type=int, default=7777)
    parser.add_argument("--keep-gaps", type=int, default=DEFAULT_KEEP_GAPS)
    args = parser.parse_args(argv)
    stopped: list[bool] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.append(True))
    sniffer = Sniffer(args.iface, args.mac, args.ip, args.port, args.keep_gaps)
    print("listening", file=sys.stderr, flush=True)
    try:
        sniffer.run(stopped)
    finally:
        sniffer.sock.close()
    print(json.dumps(sniffer.result()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
