"""The same job drives every policy: the benchmark's peers (``benchmarks/peers.py``) run
through ``MigrationJob`` against the in-memory fakes, their settings on both QEMUs, their
escalation applied and their give-up rolled back like any failure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from engine_fakes import MiB, World, done, q

from segue.api.migration import MigrationOptionsBody
from segue.engine.phases import Phase

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from peers import PEERS, PeerPolicy

OPTIONS = MigrationOptionsBody(allow_postcopy=False, deadline_s=600.0, stall_timeout_s=86_400.0)
STUCK = [q("active", n * MiB, 200 * MiB, iteration=n) for n in range(1, 40)]


@pytest.mark.parametrize("name", list(PEERS))
async def test_each_peer_runs_through_the_job(name: str) -> None:
    w = World([*STUCK, done()])
    await w.job(OPTIONS, PeerPolicy(PEERS[name], 256 * MiB)).run()
    assert w.store.phases[-1] == Phase.COMPLETED, w.store.notes
    assert not {"dirty_rate", "measure_throughput"} & set(w.src.calls)  # peers measure nothing
    settings = next(n for n in w.store.notes if n.startswith("capabilities"))
    assert str(PEERS[name].capabilities) in settings
    escalated = [n for n in w.store.notes if n.startswith("policy: set_parameters")]
    assert bool(escalated) == (name in ("proxmox", "nova"))
    assert w.store.summary["downtime_limit_ms"] >= PEERS[name].downtime_ms


async def test_a_peer_that_gives_up_is_rolled_back_like_any_failure() -> None:
    w = World([q("active", 10 * MiB, 200 * MiB)])  # nothing moves any more
    await w.job(OPTIONS, PeerPolicy(PEERS["kubevirt"], 256 * MiB)).run()
    assert w.store.phases[-2:] == [Phase.ROLLING_BACK, Phase.FAILED]
    assert w.store.error_code == "MIGRATION_PEER_GAVE_UP"
    assert w.store.reason == "kubevirt progress timeout (150 s)"
    assert "abort_incoming" in w.dst.calls and w.running_on() == ["host1"]
