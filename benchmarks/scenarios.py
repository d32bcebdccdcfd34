"""The migration benchmark's scenarios and guests (pure): what each scenario moves and how
hard its guests write.

Every guest is 256 MiB; its checker (``guest/segue-check.c``) rewrites its *hot* pages in
order, wrapping around, at the rate the benchmark sets (``RATE n``, MiB/s); the size of the
hot set is fixed when the guest boots (``segue.hot_mib``), so a scenario that needs another
size has its own guest. Scenarios:

- idle, dirty-25, dirty-75, dirty-150: the main guest (64 MiB hot) dirtying at 0, 25 %,
  75 % and 150 % of the measured bandwidth;
- prober: the main guest idle (it answers the prober every 1.5 ms, like every scenario);
- sparse: a guest with 128 MiB hot rewritten at 10 % of the bandwidth (about 4.6 MiB/s on
  the 400 Mbit/s link): its working set is far larger than what the link carries within any
  downtime target users would accept (46 MiB/s x 0.3 s = 14 MiB), but its dirty rate is low,
  so every policy should converge in about one pass;
- pair: two copies of the main guest, each dirtying at 25 % of the bandwidth, moving
  host1 -> host2 at the same time over the same link (together half the link; each gets
  about half of it). The run is judged by its worse guest; each guest's blackout is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAIN = "bench1"
BASE_HOT_MIB = 64
GUEST_MEMORY_MIB = 256
# the guests the scenarios use, by name: their hot set (MiB), fixed at boot
GUESTS: dict[str, int] = {MAIN: BASE_HOT_MIB, "bench2": BASE_HOT_MIB, "sparse1": 128}


@dataclass(frozen=True)
class Scenario:
    """What one scenario moves host1 -> host2: ``guests`` (names in ``GUESTS``), all at
    once, each dirtying at ``dirty_share`` of the measured bandwidth."""

    name: str
    dirty_share: float
    guests: tuple[str, ...] = (MAIN,)

    def dirty_mibs(self, bandwidth: float) -> int:
        """Each guest's dirty rate in MiB/s on a link of ``bandwidth`` bytes/s."""
        return int(self.dirty_share * bandwidth / 2**20)

    def touched_bytes(self, main_touched: float) -> float:
        """The RAM all its guests have touched, from what the main guest's idle move sent
        (``main_touched``): each guest's hot set beyond the main guest's is touched too."""
        return sum(main_touched + (GUESTS[vm] - BASE_HOT_MIB) * 2**20 for vm in self.guests)

    def to_json(self) -> dict[str, object]:
        return {"dirty_share": self.dirty_share, "guests": list(self.guests),
                "hot_mib": [GUESTS[vm] for vm in self.guests]}


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("idle", 0.0), Scenario("dirty-25", 0.25), Scenario("dirty-75", 0.75),
    Scenario("dirty-150", 1.5), Scenario("prober", 0.0),
    Scenario("sparse", 0.1, ("sparse1",)),
    Scenario("pair", 0.25, (MAIN, "bench2")),
)}


def guests_needed(scenarios: Sequence[str]) -> list[str]:
    """The guests the given scenarios use, each once, in ``GUESTS``' order."""
    wanted = {vm for name in scenarios for vm in SCENARIOS[name].guests}
    return [vm for vm in GUESTS if vm in wanted]


def limits_s(scenarios: Sequence[str], main_touched: float | None, bandwidth: float
             ) -> Mapping[str, float | None]:
    """Each scenario's physical limit in seconds (its touched RAM / measured bandwidth);
    None when the main guest's idle move was not measured (or did not converge)."""
    return {name: SCENARIOS[name].touched_bytes(main_touched) / bandwidth
            if main_touched and name in SCENARIOS else None for name in scenarios}
