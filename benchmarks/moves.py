"""How the migration benchmark moves guests with each policy, one guest or several at once.

Segue's moves go through the lab's controller (its policy, its admission: two requests at
once for two guests, as a user would send them); each peer's move is Segue's own migration
job (``segue.engine.job``) run here, in-process, driving both agents with the peer's policy
object (``peers.PeerPolicy``); several guests are several jobs at once. Either way a move's
numbers come from its job's summary (``stats.run_result``).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from segue.api.migration import MigrationOptionsBody, MigrationRequestBody
from segue.clients.agent import AgentClient
from segue.clients.controller import ControllerClient
from segue.domain.errors import SegueError
from segue.domain.host import HostFacts
from segue.engine.context import JobSpec, Ports
from segue.engine.job import MigrationJob
from segue.engine.phases import TERMINAL, Phase, check_transition
from segue.engine.policies import MigrationPolicy
from segue.engine.ports import MonotonicClock
from segue.engine.progress import Progress
from segue.lab.topology import LabPlan

sys.path.insert(0, str(Path(__file__).parent))
from peers import PEERS, Peer, PeerPolicy
from stats import run_result

RAM_BYTES = 256 * 1024**2  # a guest's memory, as the peers' managers count it
NO_STALL_LIMIT_S = 86_400.0  # a peer's job gives up as the peer would, not on Segue's stall
POLL_S = 0.1
WAIT_MARGIN_S = 60.0  # how long past its deadline a Segue job may take to end


def agent_url(plan: LabPlan, host: str) -> str:
    return f"unix:{plan.host(host).agent_socket}"


def controller_url(plan: LabPlan) -> str:
    return f"unix:{plan.controller.socket}"


@dataclass
class BenchStore:
    """A peer job's record, in memory (``segue.engine.ports.JobStore``): its phase (moved as
    the phase table allows), the last sample, the summary, the outcome. The controller's
    inventory is not told (a peer's move is undone by the unmeasured move back)."""

    phase: Phase = Phase.CHECK
    reason: str | None = None
    last: Progress | None = None
    summary: dict[str, JsonValue] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    async def transition(self, job_id: str, target: Phase, message: str = "", *,
                   reason: str | None = None, error_code: str | None = None) -> None:
        check_transition(self.phase, target)
        self.phase, self.reason = target, reason if reason is not None else self.reason

    async def note(self, job_id: str, message: str) -> None:
        self.notes.append(message)

    async def record_sample(self, job_id: str, t: float, progress: Progress) -> None:
        self.last = progress

    async def set_summary(self, job_id: str, summary: dict[str, JsonValue]) -> None:
        self.summary = dict(summary)

    async def commit_location(self, vm: str, host: str, generation: int | None) -> None:
        return None


@dataclass(frozen=True)
class KnownFacts:
    """Both hosts' facts, asked of their agents before the job."""

    facts: dict[str, HostFacts]

    async def host_facts(self, host: str) -> HostFacts:
        return self.facts[host]


SEGUE_POLICIES = ("segue", "no-tls")  # through the controller: encrypted, plain

async def run_job(plan: LabPlan, policy: MigrationPolicy, vm: str, src_host: str, dest: str,
                  options: MigrationOptionsBody) -> BenchStore:
    """One migration of ``vm`` by Segue's job with ``policy``, outside the controller (its
    inventory is not told); the job's record."""
    src = AgentClient(agent_url(plan, src_host))
    dst = AgentClient(agent_url(plan, dest))
    try:
        facts = KnownFacts({src_host: await src.facts(), dest: await dst.facts()})
        store = BenchStore()
        spec = JobSpec(str(uuid.uuid4()), vm, src_host, dest, options)
        job = MigrationJob(spec, Ports(src, dst, store, facts, MonotonicClock()), policy)
        await job.run()
        return store
    finally:
        await src.aclose()
        await dst.aclose()


async def run_peer_job(plan: LabPlan, peer: Peer, vm: str, src_host: str, dest: str,
                       deadline: float) -> BenchStore:
    """One migration of ``vm`` by Segue's job with the peer's policy; the job's record."""
    # plain, as the peers' managers migrate by default (libvirt without VIR_MIGRATE_TLS)
    options = MigrationOptionsBody(deadline_s=deadline, stall_timeout_s=NO_STALL_LIMIT_S,
                                   allow_postcopy=False, tls=False)
    return await run_job(plan, PeerPolicy(peer, RAM_BYTES), vm, src_host, dest, options)


async def peer_move(plan: LabPlan, peer: Peer, vm: str, src_host: str, dest: str,
                    deadline: float) -> dict[str, Any]:
    """One move with a peer's settings; its numbers (bytes: the last sample's when the
    move did not converge)."""
    store = await run_peer_job(plan, peer, vm, src_host, dest, deadline)
    result = run_result(store.phase == Phase.COMPLETED, store.reason, store.summary)
    if result["bytes"] is None and store.last is not None:
        result["bytes"] = store.last.transferred
    result["downtime_limit_ms"] = store.summary.get("downtime_limit_ms")
    return result


async def segue_move(client: ControllerClient, vm: str, dest: str, deadline: float,
                     tls: bool = True) -> dict[str, Any]:
    """One move through the controller with Segue's policy (``tls``: encrypted, the
    default; False: ``--no-tls``); its numbers. A request the controller refuses is a move
    that did not converge (its error as the reason). Raises TimeoutError if the job has not
    ended ``WAIT_MARGIN_S`` after its deadline."""
    body = MigrationRequestBody.model_validate({"to": dest, "deadline_s": deadline,
                                                "tls": tls})
    try:
        job = await client.request_migration(vm, body)
        async with asyncio.timeout(deadline + WAIT_MARGIN_S):
            while job.phase not in TERMINAL:
                await asyncio.sleep(POLL_S)
                job = await client.get_migration(job.id)
    except SegueError as err:
        return run_result(False, f"{err.code}: {err.message}", {})
    s = job.summary
    result = run_result(job.phase == Phase.COMPLETED, job.reason, s)
    result.update(downtime_target_ms=s.get("downtime_target_ms"), postcopy=s.get("postcopy"),
                  encrypted=job.encrypted,
                  downtime_limit_ms=s.get("downtime_limit_ms"),
                  # the policy's decisions with their reasons (why a run went as it did)
                  decisions=[t.message for t in job.transitions or [] if t.message])
    return result


async def move_all(plan: LabPlan, policy: str, vms: Sequence[str], src_host: str, dest: str,
                   deadline: float) -> dict[str, dict[str, Any]]:
    """Move every guest of ``vms`` from ``src_host`` to ``dest`` at the same time with
    ``policy`` ("segue", "no-tls": Segue's with ``--no-tls``, or a name in ``PEERS``); each
    guest's numbers."""
    client = ControllerClient(controller_url(plan))
    try:
        async with asyncio.TaskGroup() as group:  # one fails: the others are cancelled
            tasks = [group.create_task(
                segue_move(client, vm, dest, deadline, tls=policy == "segue")
                if policy in SEGUE_POLICIES
                else peer_move(plan, PEERS[policy], vm, src_host, dest, deadline))
                for vm in vms]
    finally:
        await client.aclose()
    return {vm: task.result() for vm, task in zip(vms, tasks, strict=True)}
