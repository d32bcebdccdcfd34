"""The guest image, booted for real: QEMU (TCG) in a private network namespace.

The namespace holds one tap with the host-side address; QEMU runs inside it through
``ip netns exec`` and the test talks UDP to the guest through a socket created in the namespace.
The serial port is a unix-socket chardev with a log file, so the test can both read the console
and type ``verify`` into it. Needs root, qemu-system-x86_64, apt, dpkg-deb, gcc and busybox-static.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from segue.image.builder import GuestImage, build_image
from segue.image.cmdline import guest_cmdline
from segue.image.protocol import (
    Heartbeat,
    Ready,
    parse_heartbeat,
    parse_pong,
    parse_rate,
    parse_ready,
    parse_verify,
    ping_request,
    rate_request,
    verify_request,
)

pytestmark = pytest.mark.integration

HOST_ADDR = "10.199.0.1"
GUEST_ADDR = "10.199.0.2"
PORT = 7777
BOOT_TIMEOUT = 90.0


@dataclass
class Guest:
    """A running test guest and the ways to reach it."""

    proc: subprocess.Popen[bytes]
    serial_log: Path
    serial_sock: Path
    qmp_sock: Path
    udp: socket.socket
    ready: Ready
    boot_seconds: float

    def console(self) -> list[str]:
        return self.serial_log.read_text(errors="replace").splitlines()

    def request(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Sends one datagram and returns the reply (a late reply to an earlier one is skipped)."""
        self.udp.settimeout(timeout)
        self.udp.sendto(data, (GUEST_ADDR, PORT))
        head = data.split()[0]
        expected = {b"PING": b"PONG"}.get(head, head)
        while True:
            reply, _ = self.udp.recvfrom(4096)
            if reply.split()[0] in (expected, b"ERR"):
                return reply


def _wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _qmp(path: Path, command: str) -> dict[str, object]:
    """Runs one QMP command on a fresh connection and returns its reply."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        stream = sock.makefile("rw")
        stream.readline()  # greeting
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}) + "\n")
            stream.flush()
            while "event" in (reply := json.loads(stream.readline())):
                pass
        result: dict[str, object] = reply
        return result


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is missing: run `make setup`", pytrace=False)
    return build_image()


@pytest.fixture(scope="module")
def netns_name() -> Iterator[str]:
    """A namespace with tap0 at HOST_ADDR/24, removed (tap included) afterwards."""
    from pyroute2 import NetNS, netns

    name = f"segue-imgtest-{os.getpid()}"
    netns.create(name)
    try:
        with NetNS(name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("add", ifname="tap0", kind="tuntap", mode="tap")
            tap = ipr.link_lookup(ifname="tap0")[0]
            ipr.addr("add", index=tap, address=HOST_ADDR, prefixlen=24)
            ipr.link("set", index=tap, state="up")
        yield name
    finally:
        with NetNS(name) as ipr:
            for index in ipr.link_lookup(ifname="tap0"):
                ipr.link("del", index=index)
        netns.remove(name)


def _qemu_argv(image: GuestImage, tmp: Path) -> list[str]:
    cmdline = guest_cmdline(f"{GUEST_ADDR}/24", port=PORT, dirty_mbps=0)
    return [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-m", "192",
        "-smp", "1",
        "-nodefaults",
        "-display", "none",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", cmdline,
        "-chardev",
        f"socket,id=ser0,path={tmp / 'serial.sock'},server=on,wait=off,"
        f"logfile={tmp / 'serial.log'}",
        "-serial", "chardev:ser0",
        "-qmp", f"unix:{tmp / 'qmp.sock'},server=on,wait=off",
        "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
    ]  # fmt: skip


def _find_ready(guest_log: Path) -> Ready | None:
    if not guest_log.exists():
        return None
    lines = guest_log.read_text(errors="replace").splitlines()
    return next((r for r in map(parse_ready, lines) if r is not None), None)


@pytest.fixture(scope="module")
def guest(
    guest_image: GuestImage, netns_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Guest]:
    """A booted guest (READY seen); QEMU is killed afterwards if it still runs."""
    from pyroute2 import netns

    tmp = tmp_path_factory.mktemp("guest")
    argv = ["ip", "netns", "exec", netns_name, *_qemu_argv(guest_image, tmp)]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    udp = netns.create_socket(netns_name, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        log = tmp / "serial.log"
        _wait_for(lambda: _find_ready(log) or proc.poll() is not None, BOOT_TIMEOUT, "READY")
        ready = _find_ready(log)
        assert ready is not None, f"QEMU exited: {proc.stderr.read() if proc.stderr else ''!r}"
        boot = time.monotonic() - started
        yield Guest(proc, log, tmp / "serial.sock", tmp / "qmp.sock", udp, ready, boot)
    finally:
        udp.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_ready_line_reports_the_command_line_settings(guest: Guest) -> None:
    print(f"guest booted to READY in {guest.boot_seconds:.2f} s")
    assert guest.ready.port == PORT
    assert (guest.ready.hot_mib, guest.ready.pattern_mib, guest.ready.zero_mib) == (16, 16, 8)
    assert guest.ready.dirty_mbps == 0


def _heartbeats(guest: Guest) -> list[Heartbeat]:
    return [hb for hb in map(parse_heartbeat, guest.console()) if hb is not None]


def test_heartbeats_flow_on_the_serial_console(guest: Guest) -> None:
    _wait_for(lambda: len(_heartbeats(guest)) >= 10, 20, "10 heartbeats")
    beats = _heartbeats(guest)
    assert {hb.boot_id for hb in beats} == {guest.ready.boot_id}
    assert [hb.seq for hb in beats] == list(range(beats[0].seq, beats[0].seq + len(beats)))
    assert all(hb.errors == 0 for hb in beats)


def test_ping_answers_with_a_stable_boot_id(guest: Guest) -> None:
    pongs = [parse_pong(guest.request(ping_request(seq))) for seq in range(1, 21)]
    assert [p.seq for p in pongs] == list(range(1, 21))
    assert {p.boot_id for p in pongs} == {guest.ready.boot_id}
    assert all(b.reply_no > a.reply_no for a, b in itertools.pairwise(pongs))
    assert all(p.errors == 0 for p in pongs)


def test_unknown_request_gets_an_error(guest: Guest) -> None:
    assert guest.request(b"HELLO") == b"ERR unknown request"


def test_verify_over_udp_while_dirtying(guest: Guest) -> None:
    assert parse_rate(guest.request(rate_request(8))) == 8
    time.sleep(3)
    assert parse_rate(guest.request(rate_request(0))) == 0
    result = parse_verify(guest.request(verify_request(), timeout=20))
    assert result.ok, result
    assert result.boot_id == guest.ready.boot_id
    assert (result.hot_pages, result.pattern_pages, result.zero_pages) == (4096, 4096, 2048)
    assert result.dirtied_mib > 0
    assert result.passes >= 1


def test_verify_typed_on_the_serial_console(guest: Guest) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(guest.serial_sock))
        sock.sendall(b"verify\n")

    def verify_lines() -> list[str]:
        return [line for line in guest.console() if line.startswith("VERIFY ")]

    _wait_for(verify_lines, 20, "a VERIFY line on the console")
    result = parse_verify(verify_lines()[-1])
    assert result.ok, result
    assert result.boot_id == guest.ready.boot_id


def test_system_powerdown_makes_qemu_exit(guest: Guest) -> None:
    assert _qmp(guest.qmp_sock, "system_powerdown") == {"return": {}}
    started = time.monotonic()
    guest.proc.wait(timeout=15)
    print(f"QEMU exited {time.monotonic() - started:.2f} s after system_powerdown")
    assert any("powering off" in line for line in guest.console())
