"""The guest kernel command line: building it and reading the segue.* keys back."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from segue.image.cmdline import guest_cmdline, parse_guest_cmdline


def test_defaults_round_trip() -> None:
    keys = parse_guest_cmdline(guest_cmdline("10.0.0.5/24"))
    assert keys == {
        "ip": "10.0.0.5/24",
        "port": "7777",
        "hot_mib": "16",
        "dirty_mbps": "0",
        "pattern_mib": "16",
        "zero_mib": "8",
        "heartbeat_ms": "50",
    }


def test_every_setting_lands_on_the_line() -> None:
    line = guest_cmdline(
        "192.168.7.9/16",
        port=9000,
        hot_mib=32,
        dirty_mbps=100,
        pattern_mib=4,
        zero_mib=0,
        heartbeat_ms=20,
        gateway="192.168.0.1",
    )
    keys = parse_guest_cmdline(line)
    assert keys["gw"] == "192.168.0.1"
    assert (keys["port"], keys["hot_mib"], keys["dirty_mbps"]) == ("9000", "32", "100")
    assert (keys["pattern_mib"], keys["zero_mib"], keys["heartbeat_ms"]) == ("4", "0", "20")


def test_no_disk_means_no_disk_keys() -> None:
    keys = parse_guest_cmdline(guest_cmdline("10.0.0.5/24", disk_rate=7))
    assert "disk" not in keys and "disk_rate" not in keys


def test_a_disk_journal_lands_on_the_line() -> None:
    keys = parse_guest_cmdline(guest_cmdline("10.0.0.5/24", disk="/dev/vda", disk_rate=20))
    assert (keys["disk"], keys["disk_rate"]) == ("/dev/vda", "20")
    assert parse_guest_cmdline(guest_cmdline("10.0.0.5/24", disk="/dev/vdb"))["disk_rate"] == "50"


@pytest.mark.parametrize(
    ("disk", "rate"),
    [("vda", 50), ("/dev/v da", 50), ("/dev/vda\n", 50), ("/" + "x" * 255, 50),
     ("/dev/vda", 0), ("/dev/vda", 100_001), ("/dev/vda", -1)],
)
def test_bad_disk_settings_are_rejected(disk: str, rate: int) -> None:
    with pytest.raises(ValueError):
        guest_cmdline("10.0.0.5/24", disk=disk, disk_rate=rate)


def test_boots_quietly_on_the_serial_console() -> None:
    words = guest_cmdline("10.0.0.5/24").split()
    assert "console=ttyS0,115200" in words
    assert "quiet" in words
    assert "panic=-1" in words


def test_no_gateway_means_no_gw_key() -> None:
    assert "gw" not in parse_guest_cmdline(guest_cmdline("10.0.0.5/24"))


@pytest.mark.parametrize("ip", ["10.0.0.5", "10.0.0.5/33", "300.0.0.1/24", "eth0", "fe80::1/64"])
def test_bad_address_is_rejected(ip: str) -> None:
    with pytest.raises(ValueError):
        guest_cmdline(ip)


def test_bad_gateway_is_rejected() -> None:
    with pytest.raises(ValueError):
        guest_cmdline("10.0.0.5/24", gateway="10.0.0")


@pytest.mark.parametrize(
    "build",
    [
        lambda: guest_cmdline("10.0.0.5/24", port=0),
        lambda: guest_cmdline("10.0.0.5/24", port=70000),
        lambda: guest_cmdline("10.0.0.5/24", hot_mib=-1),
        lambda: guest_cmdline("10.0.0.5/24", dirty_mbps=-5),
        lambda: guest_cmdline("10.0.0.5/24", pattern_mib=-1),
        lambda: guest_cmdline("10.0.0.5/24", zero_mib=-1),
        lambda: guest_cmdline("10.0.0.5/24", heartbeat_ms=0),
    ],
)
def test_out_of_range_settings_are_rejected(build: Callable[[], str]) -> None:
    with pytest.raises(ValueError):
        build()


def test_parse_ignores_other_tokens_and_keeps_the_last_value() -> None:
    line = "console=ttyS0 segue.port=1 quiet segue. segue.port=2 segue.flag xsegue.ip=1 segue.ip="
    assert parse_guest_cmdline(line) == {"port": "2", "ip": ""}


def test_parse_empty_line() -> None:
    assert parse_guest_cmdline("") == {}
