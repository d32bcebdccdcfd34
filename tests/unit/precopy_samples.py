"""``query-migrate`` samples of a pre-copy, pass by pass, for the policy's tables."""

from __future__ import annotations

from segue.api.qemu import MigrationStatus
from segue.engine.progress import Progress

MiB = 2**20
MEM, LINK = 256 * MiB, 46 * MiB  # the benchmark's guest and link


def passes(dirty_sets_mib: list[float], link: float = LINK,
           memory: float = MEM) -> list[tuple[float, Progress]]:
    """(seconds since the start, sample) of a pre-copy at ``link``: pass 1 sends ``memory``,
    each later pass one of ``dirty_sets_mib``; a sample 50 ms into each pass and one 50 ms
    before its end (when it lasts longer than 100 ms)."""
    out, t, sent = [], 0.0, 0.0
    for iteration, size in enumerate([memory, *(d * MiB for d in dirty_sets_mib)], start=1):
        length = size / link
        marks = [(0.05, 0.05 * link, size - 0.05 * link)]
        if length > 0.1:
            marks.append((length - 0.05, size - 0.05 * link, 0.05 * link))
        for into, done, left in marks:
            out.append((t + into, Progress(
                status=MigrationStatus.ACTIVE, transferred=int(sent + done),
                remaining=int(left), total=int(memory), dirty_rate=0.0, throughput=link,
                iteration=iteration, expected_downtime_ms=None, downtime_ms=None,
                total_time_ms=(t + into) * 1000, setup_time_ms=None, eta_s=None,
                converging=None)))
        t, sent = t + length, sent + size
    return out
