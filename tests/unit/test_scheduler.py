"""The queue of migrations under per-host limits: which queued jobs start, in which order."""

from __future__ import annotations

import pytest

from segue.controller.scheduler import HostLimits, Running, Waiting, must_wait, next_to_start
from segue.domain.errors import InvalidRequest

ONE = HostLimits(max_outgoing=1, max_incoming=1)
TWO = HostLimits()


def jobs(*specs: str) -> list[Waiting]:
    """``"a:h1>h2"`` -> Waiting("a", "h1", "h2")."""
    out = []
    for spec in specs:
        job_id, hosts = spec.split(":")
        source, dest = hosts.split(">")
        out.append(Waiting(job_id, source, dest))
    return out


def running(*pairs: str) -> Running:
    return Running.of(p.partition(">")[::2] for p in pairs)


CASES = [
    # (what, queued in order, running now, limits, expected starts)
    ("nothing queued", [], ["h1>h2"], ONE, []),
    ("free hosts start at once", ["a:h1>h2"], [], ONE, ["a"]),
    ("a busy source holds its jobs", ["a:h1>h2", "b:h1>h3"], ["h1>h4"], ONE, []),
    ("a busy destination holds its jobs", ["a:h1>h2", "b:h3>h2"], ["h4>h2"], ONE, []),
    ("one slot: only the oldest of a source starts", ["a:h1>h2", "b:h1>h3", "c:h1>h2"],
     [], ONE, ["a"]),
    ("two slots: the two oldest start", ["a:h1>h2", "b:h1>h3", "c:h1>h4"], [], TWO, ["a", "b"]),
    ("a running job uses one of two slots", ["a:h1>h2", "b:h1>h3"], ["h1>h4"], TWO, ["a"]),
    ("a job on free hosts starts past a waiting one", ["a:h1>h2", "b:h3>h4"], ["h1>h5"], ONE,
     ["b"]),
    ("a waiting job keeps its destination slot", ["a:h1>h2", "b:h3>h2"], ["h1>h5"], ONE, []),
    ("a waiting job keeps its source slot", ["a:h1>h2", "b:h1>h3"], ["h4>h2"], ONE, []),
    ("a source may also receive", ["a:h1>h2", "b:h2>h1"], ["h1>h3"], ONE, ["b"]),
    ("slots taken in this call count", ["a:h1>h2", "b:h3>h2", "c:h4>h5"], [], ONE, ["a", "c"]),
    ("the queue drains in order on a shared source", ["b:h1>h3", "c:h1>h2"], [], ONE, ["b"]),
]


@pytest.mark.parametrize(("queued", "now", "limits", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_next_to_start(queued: list[str], now: list[str], limits: HostLimits,
                       expected: list[str]) -> None:
    assert next_to_start(jobs(*queued), running(*now), limits) == expected


@pytest.mark.parametrize(("queued", "now", "new", "waits"), [
    ([], [], "n:h1>h2", False),
    ([], ["h1>h3"], "n:h1>h2", True),
    ([], ["h3>h2"], "n:h1>h2", True),
    (["a:h1>h3"], ["h1>h4"], "n:h5>h3", True),  # would overtake a on h3's incoming slot
    (["a:h1>h3"], ["h1>h4"], "n:h5>h6", False),
])
def test_a_new_request_waits_behind_the_queue(queued: list[str], now: list[str], new: str,
                                             waits: bool) -> None:
    assert must_wait(jobs(new)[0], jobs(*queued), running(*now), ONE) is waits


@pytest.mark.parametrize("limits", [HostLimits(0, 1), HostLimits(1, 0), HostLimits(-1, 2)])
def test_limits_below_one_are_refused(limits: HostLimits) -> None:
    with pytest.raises(InvalidRequest) as err:
        limits.validate()
    assert err.value.code == "MIGRATION_LIMIT_INVALID"
