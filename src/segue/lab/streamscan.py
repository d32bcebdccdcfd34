"""Lab stream scanner: does the guest's memory pass a link in the clear?

Run inside one lab namespace, never in the root namespace:
``ip netns exec <ns> python -m segue.lab.streamscan --iface mig0 --needles FILE``.
It keeps the TCP payload of every IPv4 frame on ``--iface`` (an AF_PACKET raw socket, root),
up to ``--max-mib``, until SIGTERM/SIGINT; then it looks for each needle (hex strings, one
JSON list in ``FILE``) in what it kept and prints one JSON object: ``{"iface", "frames",
"tcp_frames", "payload_bytes", "kept_bytes", "dropped", "needles", "found"}`` (``dropped``:
frames the kernel dropped because this process was slow; ``found``: how many needles
occur).

The needles come from the guest checker's pattern pages (``checker_needles``): page ``i``
holds words ``mix64(boot ^ PATTERN_SALT ^ i) + w * GOLDEN`` (``guest/segue-check.c``),
fixed for a boot and, 32 bytes long, never found by chance. A plain migration stream
carries those pages as they are; an encrypted one none of them.

Payloads are kept back to back, so a needle split over two frames of one stream is found
too (a frame of another stream in between may split one; there are many needles). The
socket asks for a 32 MiB buffer (``SO_RCVBUFFORCE``) so that a fast stream loses few frames.
Nothing about the namespace is changed: the socket is not promiscuous (the host's own
traffic is all there is to see).

``BackgroundStreamScan`` runs it from the lab's side (``ip netns exec``) until ``stop()``.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segue.domain.errors import Unavailable
from segue.lab.tools import Tool, finish, spawn

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
SOL_PACKET = 263
SO_RCVBUFFORCE = 33  # Linux; root may exceed rmem_max
PACKET_STATISTICS = 6
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
PATTERN_SALT = 0x5EC0E5A17E12A7B5
PAGES_PER_MIB = 256
NEEDLE_WORDS = 4  # 32 bytes: words 1..4 of a pattern page
FRAME_MAX = 1 << 18


def mix64(x: int) -> int:
    """The guest checker's mixer (splitmix64's finalizer), on 64-bit words."""
    x &= MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def pattern_page_needle(boot_id: int, page: int, words: int = NEEDLE_WORDS) -> bytes:
    """Words 1..``words`` of pattern page ``page`` as the guest holds them (little-endian)."""
    seed = mix64(boot_id ^ PATTERN_SALT ^ page)
    return b"".join(struct.pack("<Q", (seed + w * GOLDEN) & MASK64)
                    for w in range(1, words + 1))


def checker_needles(boot_id: str, pattern_mib: int, count: int = 64) -> list[bytes]:
    """``count`` needles from pattern pages spread over the checker's pattern region
    (``boot_id``: its 16 hex digits, from a VERIFY or PONG reply)."""
    boot, pages = int(boot_id, 16), max(1, pattern_mib * PAGES_PER_MIB)
    step = max(1, pages // count)
    return [pattern_page_needle(boot, i) for i in range(0, pages, step)][:count]


def tcp_payload(frame: bytes | memoryview) -> memoryview | None:
    """The TCP payload of an Ethernet IPv4 frame, or None for any other frame."""
    if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    if frame[23] != socket.IPPROTO_TCP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, 16)[0]
    tcp = 14 + ihl
    if len(frame) < tcp + 20:
        return None
    offset = tcp + (frame[tcp + 12] >> 4) * 4
    end = min(len(frame), 14 + total) if total else len(frame)  # 0: a GSO frame
    return memoryview(frame)[offset:end] if offset < end else None


class StreamScan:
    """One AF_PACKET socket on ``iface`` and the TCP payload kept from it."""

    def __init__(self, iface: str, max_bytes: int) -> None:
        self.iface, self.max_bytes = iface, max_bytes
        self.kept = bytearray()
        self.frames = self.tcp_frames = self.payload_bytes = 0
        self.dropped = 0
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        self.sock.bind((iface, ETH_P_ALL))
        self.sock.settimeout(0.2)

    def run(self, stopped: list[bool]) -> None:
        """Capture until ``stopped`` is non-empty (checked at least every 0.2 s)."""
        buf = bytearray(FRAME_MAX)
        while not stopped:
            try:
                n = self.sock.recv_into(buf)
            except TimeoutError:
                continue
            self.frames += 1
            payload = tcp_payload(memoryview(buf)[:n])
            if payload is None or not len(payload):
                continue
            self.tcp_frames += 1
            self.payload_bytes += len(payload)
            if len(self.kept) < self.max_bytes:
                self.kept += payload[:self.max_bytes - len(self.kept)]
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        self.dropped = struct.unpack("II", raw)[1]

    def result(self, needles: list[bytes]) -> dict[str, Any]:
        data = bytes(self.kept)
        return {"iface": self.iface, "frames": self.frames, "tcp_frames": self.tcp_frames,
                "payload_bytes": self.payload_bytes, "kept_bytes": len(data),
                "dropped": self.dropped, "needles": len(needles),
                "found": sum(1 for n in needles if n in data)}


class BackgroundStreamScan:
    """This module running in lab namespace ``ns`` on ``iface`` until ``stop()``; the
    constructor returns once its socket is bound. Raises Unavailable (``SNIFFER_FAILED``)
    if it cannot start or its result cannot be read."""

    def __init__(self, ns: str, iface: str, needles: list[bytes], max_mib: int = 512) -> None:
        self.where = f"{ns}/{iface}"
        self.needles = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)  # noqa: SIM115
        with self.needles:
            json.dump([n.hex() for n in needles], self.needles)
        self.tool = Tool("SNIFFER_FAILED", f"stream scan on {self.where}")
        try:
            self.proc = spawn(self.tool, ns, "segue.lab.streamscan",
                              ["--iface", iface, "--needles", self.needles.name,
                               "--max-mib", str(max_mib)], listening=True)
        except Unavailable:
            Path(self.needles.name).unlink(missing_ok=True)
            raise

    def stop(self) -> dict[str, Any]:
        """End the capture; the scan's result (see the module doc)."""
        try:
            return finish(self.tool, self.proc, timeout=120)
        finally:
            Path(self.needles.name).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: capture until SIGTERM/SIGINT, then print the result as JSON. Prints
    ``listening`` on stderr once the socket is bound (callers wait for it)."""
    parser = argparse.ArgumentParser(prog="python -m segue.lab.streamscan")
    parser.add_argument("--iface", required=True)
    parser.add_argument("--needles", required=True, type=Path,
                        help="a JSON list of hex strings to look for")
    parser.add_argument("--max-mib", type=int, default=512)
    args = parser.parse_args(argv)
    needles = [bytes.fromhex(h) for h in json.loads(args.needles.read_text())]
    stopped: list[bool] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.append(True))
    scan = StreamScan(args.iface, args.max_mib << 20)
    print("listening", file=sys.stderr, flush=True)
    try:
        scan.run(stopped)
    finally:
        scan.sock.close()
    print(json.dumps(scan.result(needles)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
