"""The prober: pure gap computation, and real probes against a fake guest on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from segue.domain.errors import Unavailable
from segue.lab.prober import Sample, compute_gaps, main, parse_pong, probe, verify


class FakeGuest:
    """A UDP server on 127.0.0.1 that answers like the guest checker; ``pause(s)`` makes it
    swallow pings for ``s`` seconds from now; ``boot_id`` can change to fake a reboot;
    ``verify_s`` makes a VERIFY take that long, answering ``ERR busy`` to others meanwhile."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.boot_id = "00000000000000aa"
        self.replies = 0
        self.silent_until = 0.0
        self.verify_s = 0.0
        self.verifying: tuple[float, tuple[str, int]] | None = None  # (due, peer)
        self.busy_replies = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def pause(self, seconds: float) -> None:
        self.silent_until = time.monotonic() + seconds

    def _answer(self, data: bytes, peer: tuple[str, int]) -> bytes | None:
        if data == b"VERIFY" and self.verify_s > 0:
            if self.verifying is not None:
                self.busy_replies += 1
                return b"ERR busy"
            self.verifying = (time.monotonic() + self.verify_s, peer)
            return None
        if data == b"VERIFY":
            return b"VERIFY OK pass=3 errors=0\n"
        if time.monotonic() < self.silent_until:
            return None
        self.replies += 1
        seq = data.split()[1].decode()
        return f"PONG {seq} {self.boot_id} {self.replies} 1000 3 0".encode()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            if self.verifying is not None and time.monotonic() >= self.verifying[0]:
                self.sock.sendto(b"VERIFY OK pass=3 errors=0\n", self.verifying[1])
                self.verifying = None
            try:
                data, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            reply = self._answer(data, peer)
            if reply is not None:
                self.sock.sendto(reply, peer)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def guest() -> Iterator[FakeGuest]:
    fake = FakeGuest()
    try:
        yield fake
    finally:
        fake.close()


def test_gaps_between_replies() -> None:
    samples = [
        Sample(0.0, 0.001, 0),
        Sample(0.01, 0.011, 1),
        Sample(0.02, None, 2),
        Sample(0.03, 0.231, 3),
        Sample(0.04, 0.232, 4),
    ]
    stats = compute_gaps(samples, start=0.0, end=0.04)
    assert stats.longest_gap_ms == pytest.approx(220.0)
    assert (stats.gap_start, stats.gap_end) == (0.011, 0.231)
    assert stats.max_rtt_ms == pytest.approx(201.0)


def test_gap_counts_late_first_reply() -> None:
    samples = [Sample(0.0, None, 0), Sample(0.1, 0.5, 1), Sample(0.2, 0.501, 2)]
    stats = compute_gaps(samples, start=0.0, end=0.2)
    assert stats.longest_gap_ms == pytest.approx(500.0)
    assert stats.gap_start == 0.0


def test_gap_counts_silence_until_the_end() -> None:
    samples = [Sample(0.0, 0.001, 0), Sample(0.5, None, 1), Sample(1.0, None, 2)]
    stats = compute_gaps(samples, start=0.0, end=1.0)
    assert stats.longest_gap_ms == pytest.approx(999.0)


def test_no_reply_is_whole_period() -> None:
    stats = compute_gaps([Sample(0.0, None, 0), Sample(2.0, None, 1)], start=0.0, end=2.0)
    assert stats.longest_gap_ms == pytest.approx(2000.0)
    assert stats.max_rtt_ms == 0.0


def test_parse_pong() -> None:
    reply = parse_pong(b"PONG 7 0123456789abcdef 12 3400 5 1")
    assert reply is not None
    assert (reply.seq, reply.boot_id, reply.passes, reply.errors) == (
        7, "0123456789abcdef", 5, 1)
    assert parse_pong(b"PONG 7 0123456789abcdef") is None
    assert parse_pong(b"PONG x 0123456789abcdef 1 2 3 4") is None
    assert parse_pong(b"PONG 7 abc 12 3400 5 1") is None  # boot ids are 16 hex digits


def test_probe_measures_a_pause(guest: FakeGuest) -> None:
    timer = threading.Timer(0.3, guest.pause, args=(0.2,))
    timer.start()
    try:
        result = probe("127.0.0.1", guest.port, seconds=1.0, interval_ms=1.5)
    finally:
        timer.cancel()
    assert result.sent > 300
    assert result.lost > 50
    assert 190.0 <= result.longest_gap_ms <= 260.0
    assert 250.0 <= result.gap_start_ms <= 400.0
    assert result.boot_ids == ["00000000000000aa"]
    assert result.guest_pass == 3


def test_probe_sees_a_reboot(guest: FakeGuest) -> None:
    timer = threading.Timer(0.2, setattr, args=(guest, "boot_id", "00000000000000bb"))
    timer.start()
    try:
        result = probe("127.0.0.1", guest.port, seconds=0.4, interval_ms=2.0)
    finally:
        timer.cancel()
    assert result.boot_ids == ["00000000000000aa", "00000000000000bb"]
    assert result.longest_gap_ms < 100.0


def test_verify(guest: FakeGuest) -> None:
    assert verify("127.0.0.1", guest.port) == "VERIFY OK pass=3 errors=0"


def test_verify_waits_out_a_slow_verification(guest: FakeGuest) -> None:
    guest.verify_s = 0.25  # longer than one attempt, shorter than all five
    assert verify("127.0.0.1", guest.port, attempts=5, timeout=0.1) == "VERIFY OK pass=3 errors=0"
    assert guest.busy_replies >= 2  # the repeats were refused and skipped


def test_verify_without_guest() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(Unavailable) as err:
            verify("127.0.0.1", port, attempts=2, timeout=0.1)
    assert err.value.code == "GUEST_NO_REPLY"


def test_main_json(guest: FakeGuest, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--ip", "127.0.0.1", "--port", str(guest.port), "--seconds", "0.2", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["received"] > 0
    assert out["lost"] == out["sent"] - out["received"]
    assert main(["--ip", "127.0.0.1", "--port", str(guest.port), "--verify"]) == 0
    assert "VERIFY OK" in capsys.readouterr().out
