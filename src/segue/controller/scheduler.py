"""Which queued migrations may start now, under per-host concurrency limits (pure).

Every host runs at most ``max_outgoing`` migrations out of it and ``max_incoming`` into it at
once (like vSphere's per-host vMotion limits); requests beyond that wait, queued in request
order. Order is kept per slot: a queued job that must wait holds its place on both its
source's outgoing slot and its destination's incoming slot, so no later job that needs either
slot overtakes it; a later job whose two slots are free (and wanted by no earlier waiting job)
starts at once.

Errors: ``InvalidRequest`` (``MIGRATION_LIMIT_INVALID``) for a limit below 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from segue.domain.errors import InvalidRequest


@dataclass(frozen=True)
class HostLimits:
    """How many migrations may run at once out of and into each host."""

    max_outgoing: int = 2
    max_incoming: int = 2

    def validate(self) -> None:
        """Raise InvalidRequest (``MIGRATION_LIMIT_INVALID``) unless both limits are >= 1."""
        if self.max_outgoing < 1 or self.max_incoming < 1:
            raise InvalidRequest("MIGRATION_LIMIT_INVALID",
                                 f"per-host migration limits must be at least 1 (outgoing "
                                 f"{self.max_outgoing}, incoming {self.max_incoming})",
                                 "set max_outgoing_per_host and max_incoming_per_host to >= 1")


@dataclass(frozen=True)
class Waiting:
    """A queued job, as the scheduler sees it."""

    id: str
    source: str
    dest: str


@dataclass(frozen=True)
class Running:
    """Migrations holding a slot now, per host: ``outgoing[host]``, ``incoming[host]``."""

    outgoing: Mapping[str, int]
    incoming: Mapping[str, int]

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Running:
        """Counts from the ``(source, dest)`` of every running migration."""
        pairs = list(pairs)
        return cls(Counter(s for s, _ in pairs), Counter(d for _, d in pairs))


def next_to_start(queued: Sequence[Waiting], running: Running, limits: HostLimits) -> list[str]:
    """The ids of the queued jobs to start now, in request order.

    ``queued`` must be in request order (oldest first). A job starts when its source has an
    outgoing slot and its destination an incoming slot left (counting the jobs started by this
    same call) and no earlier queued job waits for either slot."""
    outgoing, incoming = Counter(running.outgoing), Counter(running.incoming)
    held_out: set[str] = set()  # sources whose next slot an earlier waiting job holds
    held_in: set[str] = set()
    start: list[str] = []
    for job in queued:
        free = (job.source not in held_out and job.dest not in held_in
                and outgoing[job.source] < limits.max_outgoing
                and incoming[job.dest] < limits.max_incoming)
        if free:
            start.append(job.id)
            outgoing[job.source] += 1
            incoming[job.dest] += 1
        else:
            held_out.add(job.source)
            held_in.add(job.dest)
    return start


def must_wait(candidate: Waiting, queued: Sequence[Waiting], running: Running,
              limits: HostLimits) -> bool:
    """Whether a new request must be queued behind ``queued`` rather than start at once."""
    return candidate.id not in next_to_start([*queued, candidate], running, limits)
