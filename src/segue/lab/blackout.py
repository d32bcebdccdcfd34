"""Where a migration's blackout goes: pure arithmetic over timestamps, no I/O.

Inputs, all epoch seconds on the machine's one wall clock:

- ``stop_at`` / ``resume_at``: the source's QMP ``STOP`` and the destination's ``RESUME``
  (the job summary's ``source_stop_at`` / ``dest_resume_at``);
- ``probe``: the prober's result (``longest_gap_ms``, ``gap_start_wall``, ``gap_end_wall``);
- ``dest`` / ``fabric``: ``segue.lab.sniffer`` results on the destination host's VM bridge
  and on the switch's fabric bridge (``{"tracks": {kind: track}}``).

The parts (milliseconds, rounded to 0.1; None whenever an input is missing or the answer
cannot be known exactly from what was kept, never an estimate):

- ``lead_in_ms``: the prober's last reply before the gap -> ``STOP`` (replies in flight);
- ``switchover_ms``: ``STOP`` -> ``RESUME``;
- ``rarp_after_resume_ms`` / ``rarp_fabric_after_resume_ms``: ``RESUME`` -> the first RARP
  for the VM's MAC after ``STOP`` on the destination bridge / on the fabric (negative if the
  announce left before QEMU stamped RESUME);
- ``network_path_ms``: ``RESUME`` -> the first ping seen on the destination bridge after
  ``RESUME`` (when the network delivers to the VM's new port);
- ``guest_answer_ms``: ``RESUME`` -> the first reply seen on the destination bridge after
  ``RESUME`` (when the guest answered);
- ``prober_answer_ms``: ``RESUME`` -> the prober's first reply after its gap;
- ``blackout_ms``: the prober's longest gap.

So ``blackout ~= lead_in + switchover + prober_answer`` when the gap is the migration's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Breakdown:
    """The parts of one migration's blackout (see the module docstring), ms or None."""

    switchover_ms: float | None
    network_path_ms: float | None
    rarp_after_resume_ms: float | None
    rarp_fabric_after_resume_ms: float | None
    guest_answer_ms: float | None
    prober_answer_ms: float | None
    lead_in_ms: float | None
    blackout_ms: float | None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def first_at_or_after(track: Mapping[str, Any] | None, t: float | None) -> float | None:
    """The first arrival at or after ``t`` in a sniffer track, or None if there is none or
    it is not known exactly.

    Exact when ``t`` is at or before the first arrival, or falls inside one of the kept gaps
    (``before < t <= after`` gives ``after``). When the sniffer kept every interval
    (``len(gaps) == count - 1``) any ``t`` in range is found; when it dropped some and ``t``
    falls in none of the kept ones, the answer lies within a short gap that was not kept:
    None."""
    if track is None or t is None or not track.get("count"):
        return None
    first, last = float(track["first"]), float(track["last"])
    if t <= first:
        return first
    if t > last:
        return None
    for before, after in track.get("gaps", []):
        if before < t <= after:
            return float(after)
    return None


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start) * 1000.0, 1)


def _track(sniff: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    if sniff is None:
        return None
    tracks: Mapping[str, Any] = sniff.get("tracks") or {}
    found: Mapping[str, Any] | None = tracks.get(kind)
    return found


def _probe_field(probe: Mapping[str, Any] | None, key: str) -> float | None:
    value = (probe or {}).get(key)
    return float(value) if value is not None else None


def breakdown(stop_at: float | None, resume_at: float | None,
              probe: Mapping[str, Any] | None, dest: Mapping[str, Any] | None,
              fabric: Mapping[str, Any] | None = None) -> Breakdown:
    """The blackout's parts from the migration's timestamps, the prober's result and the
    destination's (and fabric's) sniffer results; any of them may be None (see the module
    docstring for each part and when it is None)."""
    rarp_dest = first_at_or_after(_track(dest, "rarp"), stop_at)
    rarp_fabric = first_at_or_after(_track(fabric, "rarp"), stop_at)
    blackout = _probe_field(probe, "longest_gap_ms")
    return Breakdown(
        switchover_ms=_ms(stop_at, resume_at),
        network_path_ms=_ms(resume_at, first_at_or_after(_track(dest, "ping"), resume_at)),
        rarp_after_resume_ms=_ms(resume_at, rarp_dest),
        rarp_fabric_after_resume_ms=_ms(resume_at, rarp_fabric),
        guest_answer_ms=_ms(resume_at, first_at_or_after(_track(dest, "reply"), resume_at)),
        prober_answer_ms=_ms(resume_at, _probe_field(probe, "gap_end_wall")),
        lead_in_ms=_ms(_probe_field(probe, "gap_start_wall"), stop_at),
        blackout_ms=round(blackout, 1) if blackout is not None else None,
    )
