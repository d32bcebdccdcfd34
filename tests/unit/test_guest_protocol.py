"""The guest checker's protocol: request formatting and reply / console-line parsing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from segue.image.protocol import (
    Heartbeat,
    Pong,
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

BOOT = "0123456789abcdef"
VERIFY_OK = (
    f"VERIFY boot={BOOT} result=ok pass=3 errors=0 hot_pages=4096 pattern_pages=4096 "
    "zero_pages=2048 hot_errors=0 pattern_errors=0 zero_errors=0 dirtied_mib=48 uptime_ms=9000 "
    "disk_records=0 disk_acked=0 disk_errors=0 disk_full=0"
)
VERIFY_DISK = (
    VERIFY_OK.replace("disk_records=0", "disk_records=1503")
    .replace("disk_acked=0", "disk_acked=1500")
)


def test_requests() -> None:
    assert ping_request(42) == b"PING 42"
    assert verify_request() == b"VERIFY"
    assert rate_request(25) == b"RATE 25"


@pytest.mark.parametrize("call", [lambda: ping_request(-1), lambda: rate_request(-1)])
def test_negative_request_values_are_rejected(call: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError):
        call()


def test_parse_pong_bytes_and_str() -> None:
    expected = Pong(seq=7, boot_id=BOOT, reply_no=12, uptime_ms=3456, passes=2, errors=0)
    assert parse_pong(f"PONG 7 {BOOT} 12 3456 2 0".encode()) == expected
    assert parse_pong(f"PONG 7 {BOOT} 12 3456 2 0\n") == expected


@pytest.mark.parametrize(
    "reply",
    [
        b"",
        b"ERR unknown request",
        f"PONG 7 {BOOT} 12 3456 2".encode(),
        f"PONG 7 {BOOT} 12 3456 2 0 9".encode(),
        f"PONG x {BOOT} 12 3456 2 0".encode(),
        f"PONG 7 {BOOT} -1 3456 2 0".encode(),
        b"PONG 7 XYZ 12 3456 2 0",
        f"PONG 7 {BOOT.upper()} 12 3456 2 0".encode(),
        b"PONG 7 \xff\xfe 12 3456 2 0",
        f"PING 7 {BOOT} 12 3456 2 0".encode(),
    ],
)
def test_malformed_pong_raises(reply: bytes) -> None:
    with pytest.raises(ValueError):
        parse_pong(reply)


def test_parse_verify_ok() -> None:
    result = parse_verify(VERIFY_OK.encode())
    assert result.ok
    assert result.boot_id == BOOT
    assert (result.passes, result.errors, result.dirtied_mib) == (3, 0, 48)
    assert (result.hot_pages, result.pattern_pages, result.zero_pages) == (4096, 4096, 2048)
    assert (result.hot_errors, result.pattern_errors, result.zero_errors) == (0, 0, 0)
    assert result.uptime_ms == 9000
    assert (result.disk_records, result.disk_acked, result.disk_errors) == (0, 0, 0)
    assert not result.disk_full


def test_parse_verify_with_a_disk_journal() -> None:
    result = parse_verify(VERIFY_DISK.replace("disk_full=0", "disk_full=1"))
    assert result.ok
    assert (result.disk_records, result.disk_acked, result.disk_errors) == (1503, 1500, 0)
    assert result.disk_full


def test_parse_verify_disk_errors() -> None:
    line = (VERIFY_DISK.replace("result=ok", "result=fail").replace("errors=0 hot", "errors=2 hot")
            .replace("disk_errors=0", "disk_errors=2"))
    result = parse_verify(line)
    assert not result.ok
    assert (result.errors, result.disk_errors) == (2, 2)


def test_parse_verify_fail() -> None:
    line = VERIFY_OK.replace("result=ok", "result=fail").replace("zero_errors=0", "zero_errors=3")
    result = parse_verify(line)
    assert not result.ok
    assert result.zero_errors == 3


@pytest.mark.parametrize(
    "line",
    [
        VERIFY_OK.replace("result=ok", "result=maybe"),
        VERIFY_OK.replace(" dirtied_mib=48", ""),
        VERIFY_OK.replace("pass=3", "pass=three"),
        VERIFY_OK.replace("pass=3", "pass3"),
        VERIFY_OK.replace(f"boot={BOOT}", "boot=1234"),
        VERIFY_OK.replace("VERIFY", "VERIFIED"),
        VERIFY_OK.replace(" disk_records=0", ""),
        VERIFY_OK.replace(" disk_acked=0", ""),
        VERIFY_OK.replace(" disk_errors=0", ""),
        VERIFY_OK.replace(" disk_full=0", ""),
        VERIFY_OK.replace("disk_full=0", "disk_full=2"),
        VERIFY_OK.replace("disk_full=0", "disk_full=yes"),
        VERIFY_OK.replace("disk_acked=0", "disk_acked=-1"),
        VERIFY_OK.replace("disk_errors=0", "disk_errors=1e3"),
        VERIFY_OK.replace("disk_records=0", "disk_records="),
        "",
    ],
)
def test_malformed_verify_raises(line: str) -> None:
    with pytest.raises(ValueError):
        parse_verify(line)


def test_parse_rate() -> None:
    assert parse_rate(b"RATE 30") == 30
    for bad in (b"RATE", b"RATE -1", b"RATE 1 2", b"ERR unknown request"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_parse_heartbeat() -> None:
    line = f"HB boot={BOOT} seq=5 pass=1 errors=0 uptime_ms=2500\r"
    assert parse_heartbeat(line) == Heartbeat(BOOT, seq=5, passes=1, errors=0, uptime_ms=2500)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "[    7.879153] reboot: Power down",
        f"HB boot={BOOT} seq=5 pass=1 errors=0",
        f"HB boot={BOOT} seq=5 pass=1 errors=0 uptime_ms=2x5",
        f"HB boot={BOOT} seq=5 pass=1 errors=x uptime_ms=2500",
        "HB boot=zz seq=5 pass=1 errors=0 uptime_ms=2500",
        VERIFY_OK,
    ],
)
def test_non_heartbeat_lines_give_none(line: str) -> None:
    assert parse_heartbeat(line) is None


def test_parse_ready() -> None:
    line = (
        f"SEGUE-CHECK READY boot={BOOT} port=7777 hot_mib=16 pattern_mib=16 zero_mib=8 dirty_mbps=0"
    )
    assert parse_ready(line) == Ready(BOOT, 7777, 16, 16, 8, 0)
    assert parse_ready("SEGUE-INIT up in 2.29 s") is None
    assert parse_ready(line.replace("port=7777", "port=")) is None


READY_DISK = (f"SEGUE-CHECK READY boot={BOOT} port=7777 hot_mib=16 pattern_mib=16 zero_mib=8 "
              "dirty_mbps=0 disk=/dev/vda disk_rate=50 disk_direct=1 disk_slots=131064")


def test_parse_ready_with_a_disk_journal() -> None:
    assert parse_ready(READY_DISK) == Ready(BOOT, 7777, 16, 16, 8, 0, disk="/dev/vda",
                                            disk_rate=50, disk_direct=True, disk_slots=131064)
    none = READY_DISK.replace("disk=/dev/vda", "disk=").replace("disk_direct=1", "disk_direct=0")
    ready = parse_ready(none.replace("disk_slots=131064", "disk_slots=0"))
    assert ready is not None and ready.disk == "" and not ready.disk_direct


@pytest.mark.parametrize("change", [("disk_rate=50", "disk_rate=x"),
                                    ("disk_direct=1", "disk_direct=2"),
                                    (" disk_slots=131064", ""),
                                    (" disk_direct=1", "")])
def test_malformed_ready_disk_fields_give_none(change: tuple[str, str]) -> None:
    assert parse_ready(READY_DISK.replace(*change)) is None
