"""The guest checker's wire and console formats (pure).

UDP requests, one ASCII datagram each, answered by one datagram:

- ``PING <seq>`` -> ``PONG <seq> <boot_id> <reply_no> <uptime_ms> <pass> <errors>``
- ``VERIFY`` -> ``VERIFY boot=<id> result=ok|fail pass=<n> errors=<n> hot_pages=<n> ...
  disk_records=<n> disk_acked=<n> disk_errors=<n> disk_full=0|1`` (the disk fields are always
  there, all 0 when the guest has no disk journal)
- ``RATE <mbps>`` -> ``RATE <mbps>``
- anything else -> ``ERR unknown request``

Console lines: ``SEGUE-CHECK READY boot=<id> port=<p> ... disk=<path> disk_rate=<n>
disk_direct=0|1 disk_slots=<n>`` once at start (``disk=`` empty without a disk journal), then
``HB boot=<id> seq=<n> pass=<n> errors=<n> uptime_ms=<n>`` every heartbeat period. A console
line ``verify`` makes the checker print a VERIFY line there too. ``SEGUE-CHECK DISK ...`` lines
say what the disk journal found wrong.

The disk journal (``segue.disk``): ``disk_acked`` is the last record the device had confirmed
when the verification started, ``disk_records`` the records of this boot found in order (at
least ``disk_acked`` when nothing is wrong; the writer runs on during the read),
``disk_errors`` the records lost, damaged, duplicated, out of order or beyond the acknowledged
end, plus the journal's open and write failures; they count into ``errors``. ``disk_full`` says
the writer reached the end of the device and stopped.

``boot_id`` is 16 hex digits, random per boot: a new id means the guest restarted (or its checker
did), the same id with a gap in ``uptime_ms`` or ``reply_no`` means it was paused.
The parsers raise ValueError with the offending text when a reply is malformed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

PORT = 7777

_BOOT_ID = re.compile(r"[0-9a-f]{16}")
_VERIFY_COUNTS = (
    "pass",
    "errors",
    "hot_pages",
    "pattern_pages",
    "zero_pages",
    "hot_errors",
    "pattern_errors",
    "zero_errors",
    "dirtied_mib",
    "uptime_ms",
    "disk_records",
    "disk_acked",
    "disk_errors",
)
_VERIFY_FIELDS = {"pass": "passes"}  # wire names that differ from the field's
_HEARTBEAT_COUNTS = ("seq", "pass", "errors", "uptime_ms")
_READY_COUNTS = ("port", "hot_mib", "pattern_mib", "zero_mib", "dirty_mbps")
_READY_DISK_COUNTS = ("disk_rate", "disk_slots")


@dataclass(frozen=True)
class Pong:
    """A PONG reply: ``reply_no`` counts every reply the checker sent since it started."""

    seq: int
    boot_id: str
    reply_no: int
    uptime_ms: int
    passes: int
    errors: int


@dataclass(frozen=True)
class VerifyResult:
    """A VERIFY reply. ``errors`` is the checker's total since boot; ``ok`` means it is zero."""

    boot_id: str
    ok: bool
    passes: int
    errors: int
    hot_pages: int
    pattern_pages: int
    zero_pages: int
    hot_errors: int
    pattern_errors: int
    zero_errors: int
    dirtied_mib: int
    uptime_ms: int
    disk_records: int
    disk_acked: int
    disk_errors: int
    disk_full: bool


@dataclass(frozen=True)
class Heartbeat:
    """One ``HB`` console line."""

    boot_id: str
    seq: int
    passes: int
    errors: int
    uptime_ms: int


@dataclass(frozen=True)
class Ready:
    """The ``SEGUE-CHECK READY`` console line: the checker's settings as it understood them."""

    boot_id: str
    port: int
    hot_mib: int
    pattern_mib: int
    zero_mib: int
    dirty_mbps: int
    disk: str = ""  # the journal's device, "" for none
    disk_rate: int = 0
    disk_direct: bool = False  # opened with O_DIRECT
    disk_slots: int = 0  # records the device holds (0 when the journal failed)


def ping_request(seq: int) -> bytes:
    """The PING datagram; raises ValueError for a negative ``seq``."""
    if seq < 0:
        raise ValueError(f"PING seq must not be negative, got {seq}")
    return f"PING {seq}".encode()


def verify_request() -> bytes:
    """The VERIFY datagram."""
    return b"VERIFY"


def rate_request(mbps: int) -> bytes:
    """The RATE datagram that sets the guest's dirty rate (MiB/s); ValueError if negative."""
    if mbps < 0:
        raise ValueError(f"dirty rate must not be negative, got {mbps}")
    return f"RATE {mbps}".encode()


def parse_pong(data: bytes | str) -> Pong:
    """Parses a PONG reply; raises ValueError if it is anything else or malformed."""
    text = _text(data)
    fields = text.split()
    if len(fields) != 7 or fields[0] != "PONG":
        raise ValueError(f"not a PONG reply: {text!r}")
    seq, reply_no, uptime_ms, passes, errors = (
        _count(name, value, text)
        for name, value in zip(
            ("seq", "reply_no", "uptime_ms", "pass", "errors"),
            (fields[1], *fields[3:]),
            strict=True,
        )
    )
    return Pong(seq, _boot_id(fields[2], text), reply_no, uptime_ms, passes, errors)


def parse_rate(data: bytes | str) -> int:
    """Parses a RATE reply into the rate the guest now uses; raises ValueError if malformed."""
    text = _text(data)
    fields = text.split()
    if len(fields) != 2 or fields[0] != "RATE":
        raise ValueError(f"not a RATE reply: {text!r}")
    return _count("rate", fields[1], text)


def parse_verify(data: bytes | str) -> VerifyResult:
    """Parses a VERIFY line (UDP reply or console); raises ValueError if malformed."""
    text = _text(data)
    values = _keyed(text, "VERIFY")
    result = values.get("result")
    if result not in ("ok", "fail"):
        raise ValueError(f"VERIFY result must be ok or fail: {text!r}")
    counts = {_VERIFY_FIELDS.get(name, name): _field(values, name, text)
              for name in _VERIFY_COUNTS}
    return VerifyResult(boot_id=_boot_id(values.get("boot", ""), text), ok=result == "ok",
                        disk_full=_flag(values, "disk_full", text), **counts)


def parse_heartbeat(line: str) -> Heartbeat | None:
    """The heartbeat in a console line, or None when the line is not a well-formed ``HB`` line.

    Serial output mixes heartbeats with other lines (and a line may be cut), so anything that
    does not parse is simply not a heartbeat.
    """
    try:
        values = _keyed(line, "HB")
        counts = [_field(values, name, line) for name in _HEARTBEAT_COUNTS]
        return Heartbeat(_boot_id(values.get("boot", ""), line), *counts)
    except ValueError:
        return None


def parse_ready(line: str) -> Ready | None:
    """The READY line's settings, or None when the line is not a well-formed READY line.

    The disk fields are optional (a checker without a disk journal printed none); when
    ``disk=`` is there, the others must be too.
    """
    try:
        values = _keyed(line, "SEGUE-CHECK READY")
        port, hot, pattern, zero, dirty = (_field(values, name, line) for name in _READY_COUNTS)
        ready = Ready(_boot_id(values.get("boot", ""), line), port, hot, pattern, zero, dirty)
        if "disk" not in values:
            return ready
        rate, slots = (_field(values, name, line) for name in _READY_DISK_COUNTS)
        return dataclasses.replace(ready, disk=values["disk"], disk_rate=rate,
                                   disk_direct=_flag(values, "disk_direct", line),
                                   disk_slots=slots)
    except ValueError:
        return None


def _text(data: bytes | str) -> str:
    if isinstance(data, bytes):
        try:
            data = data.decode("ascii")
        except UnicodeDecodeError as err:
            raise ValueError(f"reply is not ASCII: {data!r}") from err
    return data.strip()


def _keyed(text: str, head: str) -> dict[str, str]:
    """``key=value`` fields after the ``head`` words; ValueError if the head or a field is bad."""
    fields = text.split()
    words = head.split()
    if fields[: len(words)] != words:
        raise ValueError(f"not a {head} line: {text!r}")
    values: dict[str, str] = {}
    for field in fields[len(words) :]:
        key, sep, value = field.partition("=")
        if not sep or not key:
            raise ValueError(f"malformed field {field!r} in {text!r}")
        values[key] = value
    return values


def _field(values: dict[str, str], name: str, text: str) -> int:
    if name not in values:
        raise ValueError(f"missing {name}= in {text!r}")
    return _count(name, values[name], text)


def _flag(values: dict[str, str], name: str, text: str) -> bool:
    if values.get(name) not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {values.get(name)!r} in {text!r}")
    return values[name] == "1"


def _count(name: str, value: str, text: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"{name} must be a non-negative integer, got {value!r} in {text!r}")
    return int(value)


def _boot_id(value: str, text: str) -> str:
    if not _BOOT_ID.fullmatch(value):
        raise ValueError(f"boot id must be 16 hex digits, got {value!r} in {text!r}")
    return value
