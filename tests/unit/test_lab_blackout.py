"""The blackout breakdown (segue.lab.blackout) and the sniffer's bookkeeping and parsing,
over synthetic timelines."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest

from segue.lab.blackout import breakdown, first_at_or_after
from segue.lab.sniffer import Track, classify, parse_mac

T0 = 1_700_000_000.0  # an epoch second
MAC = "52:54:00:12:34:56"
IP = "10.210.2.100"


def track(times: list[float], keep: int = 32) -> dict[str, Any]:
    t = Track(keep)
    for x in times:
        t.add(x)
    return t.to_dict()


def sniff(**kinds: list[float]) -> dict[str, Any]:
    return {"tracks": {k: track(v) for k, v in kinds.items()}}


def ms(x: float) -> float:
    return T0 + x / 1000.0


def test_track_keeps_counts_ends_and_the_longest_gaps_bounded() -> None:
    times = [ms(i * 1.5) for i in range(1000)] + [ms(2000 + i * 1.5) for i in range(1000)]
    t = track(times, keep=4)
    assert t["count"] == 2000 and t["first"] == times[0] and t["last"] == times[-1]
    assert len(t["gaps"]) == 4
    assert t["gaps"][0] == [times[999], times[1000]]  # the longest first


def test_first_at_or_after_is_exact_or_none() -> None:
    t = track([ms(0), ms(10), ms(100), ms(101)])
    assert first_at_or_after(t, ms(-5)) == ms(0)
    assert first_at_or_after(t, ms(50)) == ms(100)
    assert first_at_or_after(t, ms(100)) == ms(100)
    assert first_at_or_after(t, ms(200)) is None  # nothing after
    assert first_at_or_after(None, ms(0)) is None
    assert first_at_or_after(t, None) is None
    assert first_at_or_after(track([]), ms(0)) is None


def test_first_at_or_after_inside_a_dropped_gap_is_unknown() -> None:
    t = track([ms(i) for i in range(0, 100, 2)] + [ms(500)], keep=1)
    assert first_at_or_after(t, ms(300)) == ms(500)  # in the kept (longest) gap
    assert first_at_or_after(t, ms(51)) is None  # in a 2 ms gap that was not kept


def probe(gap_start: float, gap_end: float) -> dict[str, Any]:
    return {"longest_gap_ms": (gap_end - gap_start) * 1000, "gap_start_wall": gap_start,
            "gap_end_wall": gap_end}


def test_breakdown_of_a_typical_tcg_migration() -> None:
    stop, resume = ms(1000), ms(1040)  # 40 ms switchover
    dest = sniff(rarp=[ms(1041), ms(1091)], ping=[ms(1041.5), ms(1043), ms(1141)],
                 reply=[ms(1141.2), ms(1142)])
    fabric = sniff(rarp=[ms(1041.1)])
    got = breakdown(stop, resume, probe(ms(999), ms(1141.5)), dest, fabric)
    assert got.switchover_ms == 40.0
    assert got.rarp_after_resume_ms == 1.0
    assert got.rarp_fabric_after_resume_ms == 1.1
    assert got.network_path_ms == 1.5
    assert got.guest_answer_ms == 101.2
    assert got.prober_answer_ms == 101.5
    assert got.lead_in_ms == 1.0
    assert got.blackout_ms == 142.5


def test_pings_and_announces_before_the_switchover_are_not_counted() -> None:
    stop, resume = ms(1000), ms(1040)
    dest = sniff(rarp=[ms(10), ms(1039)], ping=[ms(5), ms(6), ms(1050)], reply=[ms(7)])
    got = breakdown(stop, resume, None, dest)
    assert got.rarp_after_resume_ms == -1.0  # left before RESUME was stamped: shown, signed
    assert got.network_path_ms == 10.0
    assert got.guest_answer_ms is None  # no reply after RESUME: unknown, not zero


@pytest.mark.parametrize("stop,resume", [(None, ms(1040)), (ms(1000), None), (None, None)])
def test_missing_inputs_give_none_never_a_number(stop: float | None, resume: float | None
                                                  ) -> None:
    got = breakdown(stop, resume, None, None, None)
    assert got.switchover_ms is None and got.network_path_ms is None
    assert got.rarp_after_resume_ms is None and got.rarp_fabric_after_resume_ms is None
    assert got.guest_answer_ms is None and got.prober_answer_ms is None
    assert got.lead_in_ms is None and got.blackout_ms is None


def test_missing_tracks_give_none() -> None:
    got = breakdown(ms(0), ms(30), probe(ms(-1), ms(130)), {"tracks": {}})
    assert got.switchover_ms == 30.0 and got.blackout_ms == 131.0
    assert got.network_path_ms is None and got.guest_answer_ms is None


def eth(ethertype: int, payload: bytes, src: bytes = b"\x02" * 6) -> bytes:
    return b"\xff" * 6 + src + struct.pack("!H", ethertype) + payload


def arp_body(sender: bytes) -> bytes:
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + sender + b"\0" * 4 + sender + b"\0" * 4


def udp(src: str, dst: str, sport: int, dport: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 32, 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + struct.pack("!HHHH", sport, dport, 12, 0) + b"PING"


@pytest.mark.parametrize("frame,kind", [
    (eth(0x8035, arp_body(parse_mac(MAC))), "rarp"),
    (eth(0x0806, arp_body(parse_mac(MAC))), "garp"),
    (eth(0x8035, arp_body(b"\x52\x54\x00\0\0\1")), None),  # another VM's announce
    (eth(0x0800, udp("10.210.2.2", IP, 40000, 7777)), "ping"),
    (eth(0x0800, udp(IP, "10.210.2.2", 7777, 40000)), "reply"),
    (eth(0x0800, udp("10.210.2.2", IP, 40000, 7778)), None),
    (eth(0x0800, udp("10.210.2.2", "10.210.2.101", 40000, 7777)), None),
    (eth(0x86DD, b"\0" * 40), None),
    (b"\0" * 10, None),
])
def test_classify(frame: bytes, kind: str | None) -> None:
    assert classify(frame, parse_mac(MAC), socket.inet_aton(IP), 7777) == kind


def test_parse_mac_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_mac("52:54:00")
