"""The guest checker (``guest/segue-check.c``) run on this host, its disk journal on a file.

The checker is compiled with the image builder's flags and started with ``--cmdline FILE``
and ``--console`` on a pseudo-terminal, so the test can read its console and type ``verify``;
it answers UDP on a free port of 127.0.0.1. A regular file stands in for the guest's disk
(the checker opens, writes and reads it as it would /dev/vda). Needs gcc and a static libc.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from segue.image.builder import CHECKER_CFLAGS, CHECKER_SOURCE
from segue.image.protocol import (
    Ready,
    VerifyResult,
    parse_ready,
    parse_verify,
    verify_request,
)

RECORD = 512  # the checker's record size
START = 4096  # offset of the first record slot; the header block is at 0
READY_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checker binary, built like the image builds it."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (apt-get install gcc)")
    binary = tmp_path_factory.mktemp("checker") / "segue-check"
    proc = subprocess.run(["gcc", *CHECKER_CFLAGS, "-o", str(binary), str(CHECKER_SOURCE)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"compiling the checker failed:\n{proc.stderr}"
    assert "warning" not in proc.stderr, f"the checker must compile cleanly:\n{proc.stderr}"
    return binary


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HostChecker:
    """A running checker: its console (a pty) and its UDP port."""

    def __init__(self, binary: Path, workdir: Path, **keys: object) -> None:
        self.port = free_udp_port()
        settings: dict[str, object] = {"port": self.port, "hot_mib": 1, "pattern_mib": 1,
                                       "zero_mib": 1, "heartbeat_ms": 1000, **keys}
        cmdline = workdir / f"cmdline-{self.port}"
        cmdline.write_text(" ".join(f"segue.{k}={v}" for k, v in settings.items()) + "\n")
        self.master, slave = pty.openpty()
        self.output = ""
        try:
            self.proc = subprocess.Popen([str(binary), "--cmdline", str(cmdline),
                                          "--console", os.ttyname(slave)])
        finally:
            os.close(slave)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.settimeout(10.0)

    def read_console(self, wait: float = 0.0) -> str:
        """All console output so far, after waiting up to ``wait`` s for more."""
        deadline = time.monotonic() + wait
        while True:
            ready, _, _ = select.select([self.master], [], [],
                                        max(0.0, deadline - time.monotonic()))
            if not ready:
                return self.output
            try:
                self.output += os.read(self.master, 65536).decode(errors="replace")
            except OSError:  # the checker is gone
                return self.output

    def wait_console(self, text: str, timeout: float = READY_TIMEOUT) -> str:
        """The console's first line holding ``text``; fails the test after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.read_console(0.1).splitlines():
                if text in line:
                    return line.strip()
            assert self.proc.poll() is None, f"the checker exited:\n{self.output}"
        raise AssertionError(f"no console line with {text!r} in {timeout} s:\n{self.output}")

    def ready(self) -> Ready:
        ready = parse_ready(self.wait_console("SEGUE-CHECK READY"))
        assert ready is not None, self.output
        return ready

    def verify(self) -> VerifyResult:
        self.udp.sendto(verify_request(), ("127.0.0.1", self.port))
        return parse_verify(self.udp.recv(4096))

    def console_verify(self) -> VerifyResult:
        """A verification asked on the console, as a user on the serial line would."""
        seen = self.read_console().count("VERIFY boot=")
        os.write(self.master, b"verify\r\n")
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            lines = [ln for ln in self.read_console(0.1).splitlines() if "VERIFY boot=" in ln]
            if len(lines) > seen:
                return parse_verify(lines[seen])
        raise AssertionError(f"no VERIFY line on the console:\n{self.output}")

    def wait_acked(self, records: int, timeout: float = 10.0) -> VerifyResult:
        """The first VERIFY whose journal has at least ``records`` acknowledged records."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.verify()
            if result.disk_acked >= records:
                return result
            time.sleep(0.05)
        raise AssertionError(f"the journal did not reach {records} records:\n{self.output}")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.udp.close()
        os.close(self.master)


StartChecker = Callable[..., HostChecker]


@pytest.fixture
def run_checker(checker: Path, tmp_path: Path) -> Iterator[StartChecker]:
    """Starts checkers (``run_checker(**segue_keys)``) and kills them after the test."""
    started: list[HostChecker] = []

    def start(**keys: object) -> HostChecker:
        started.append(HostChecker(checker, tmp_path, **keys))
        return started[-1]

    try:
        yield start
    finally:
        for one in started:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                one.stop()


def disk_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def o_direct_allowed(path: Path) -> bool:
    """Whether ``path``'s filesystem takes O_DIRECT opens (what the checker tries first)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    return True


def slot(index: int) -> int:
    return START + index * RECORD


def test_without_a_disk_the_disk_fields_are_zero(run_checker: StartChecker) -> None:
    guest = run_checker()
    ready = guest.ready()
    assert (ready.disk, ready.disk_slots, ready.disk_direct) == ("", 0, False)
    result = guest.verify()
    assert result.ok and result.errors == 0
    assert (result.disk_records, result.disk_acked, result.disk_errors) == (0, 0, 0)
    assert not result.disk_full


def test_journal_is_written_and_verified(run_checker: StartChecker,
                                         tmp_path: Path) -> None:
    disk = disk_file(tmp_path / "disk0.raw", 1 << 20)
    guest = run_checker(disk=disk, disk_rate=200)
    ready = guest.ready()
    assert ready.disk == str(disk) and ready.disk_rate == 200
    assert ready.disk_slots == ((1 << 20) - START) // RECORD
    assert ready.disk_direct == o_direct_allowed(disk)
    result = guest.wait_acked(40)
    assert result.ok and result.errors == 0 and result.disk_errors == 0
    assert result.disk_records >= result.disk_acked >= 40
    on_console = guest.console_verify()
    assert on_console.ok and on_console.disk_records >= on_console.disk_acked >= 40
    data = disk.read_bytes()
    assert data[:8] == b"SEGUEJNL" and data[slot(0):slot(0) + 8] == b"SEGUEREC"
    assert int.from_bytes(data[slot(39) + 16:slot(39) + 24], "little") == 40  # seq 40 in slot 39
    assert "SEGUE-CHECK DISK" not in guest.read_console()


def record(data: bytes, index: int) -> bytes:
    return data[slot(index):slot(index + 1)]


# Each corruption: (offset, bytes to write there) given the file's contents; records 1-10
# (slots 0-9) are acknowledged when it is applied, the writer appends further on meanwhile.
CORRUPTIONS: dict[str, tuple[Callable[[bytes], tuple[int, bytes]], str]] = {
    "damaged": (lambda d: (slot(5) + 200, bytes([d[slot(5) + 200] ^ 0xFF])),
                "acknowledged record damaged"),
    "lost": (lambda d: (slot(5), bytes(RECORD)), "acknowledged record missing"),
    "duplicated": (lambda d: (slot(6), record(d, 5)), "record out of place"),
    "stray": (lambda d: (slot(1500), record(d, 5)), "record beyond the acknowledged end"),
    "header": (lambda d: (16, bytes(8)), "journal header is not this boot's"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupted_journal_fails_verification(run_checker: StartChecker, tmp_path: Path,
                                                kind: str) -> None:
    corrupt, says = CORRUPTIONS[kind]
    disk = disk_file(tmp_path / "disk0.raw", 1 << 20)
    guest = run_checker(disk=disk, disk_rate=100)
    guest.ready()
    assert guest.wait_acked(10).ok
    offset, data = corrupt(disk.read_bytes())
    with disk.open("r+b") as f:
        f.seek(offset)
        f.write(data)
    result = guest.verify()
    assert not result.ok
    assert result.disk_errors >= 1 and result.errors >= result.disk_errors
    assert says in guest.wait_console("SEGUE-CHECK DISK ERROR")


def test_a_full_disk_stops_the_writer(run_checker: StartChecker, tmp_path: Path) -> None:
    disk = disk_file(tmp_path / "disk0.raw", START + 20 * RECORD)
    guest = run_checker(disk=disk, disk_rate=1000)
    assert guest.ready().disk_slots == 20
    assert "records=20" in guest.wait_console("SEGUE-CHECK DISK FULL")
    result = guest.verify()
    assert result.ok and result.disk_full
    assert (result.disk_records, result.disk_acked, result.disk_errors) == (20, 20, 0)


def test_a_disk_that_cannot_be_opened_fails_verification(run_checker: StartChecker,
                                                         tmp_path: Path) -> None:
    guest = run_checker(disk=tmp_path)  # a directory: no disk
    assert "cannot open" in guest.wait_console("SEGUE-CHECK DISK FAILED")
    assert guest.ready().disk_slots == 0
    result = guest.verify()
    assert not result.ok and result.disk_errors == 1 and result.errors == 1


def test_a_new_boot_starts_a_fresh_journal(run_checker: StartChecker,
                                           tmp_path: Path) -> None:
    disk = disk_file(tmp_path / "disk0.raw", 1 << 20)
    first = run_checker(disk=disk, disk_rate=500)
    old_boot = first.ready().boot_id
    before = first.wait_acked(200)
    first.stop()
    second = run_checker(disk=disk, disk_rate=5)
    assert second.ready().boot_id != old_boot
    assert old_boot in second.wait_console("replacing the journal of boot=")
    result = second.verify()  # the first boot's records past this one's are not its own
    assert result.ok and result.disk_errors == 0
    assert result.disk_acked < before.disk_acked
