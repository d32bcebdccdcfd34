"""In-memory fakes of the migration engine's ports (``segue.engine.ports``), for unit tests.

- ``FakeClock``: virtual time; ``sleep`` advances it at once (and yields to the loop).
- ``MemoryStore``: a ``JobStore`` that checks every transition against the phase table and
  keeps transitions, notes, samples, the summary and the committed location.
- ``FakeAgent``: an ``AgentPort`` with VMs in given states and QEMU's migration status
  scripted: a list of ``query-migrate`` answers, one per ``migration_status`` call, the last
  one repeated (``none`` until ``migrate`` was accepted). On the source, reaching
  ``completed`` pauses it (``postmigrate``) and puts the destination in ``Wire.dest_after``
  (running unless a test says otherwise); reaching a post-copy status makes the destination
  run and pauses the source. Every call is recorded in ``calls``; ``fail`` injects an
  error into a method (``times``: how many calls fail, None: all); ``on`` runs a hook before
  a method answers (e.g. a user's cancel arriving during that call; a coroutine hook is
  awaited). ``held`` is the lease generation the host holds the VM at: a migrate, cancel or
  resume naming another is refused (``VM_NOT_OWNED``) as the agent's guard does; ``tokens``
  records what each named.
- ``World``: both agents, the store, the facts and the clock, and ``job`` to make a job.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import JsonValue

from segue.api.agent import (
    Capabilities,
    DirtyRateAnswer,
    IncomingAnswer,
    MigrationView,
    Parameters,
    ProbeAnswer,
    ProbeListener,
    RecoverAnswer,
    ThroughputAnswer,
    VMEvent,
)
from segue.api.migration import MigrationOptionsBody
from segue.api.qemu import MigrationStatus, QueryMigrate, RamStats
from segue.api.vm import VMInfo, VMSpecBody
from segue.domain.errors import Conflict, NotFound, SegueError, Unavailable
from segue.domain.host import CpuFacts, HostFacts, MemoryFacts, MigrationNicFacts, QemuFacts
from segue.domain.vm import VMState
from segue.engine.context import JobSpec, Ports
from segue.engine.job import MigrationJob
from segue.engine.phases import Phase, check_transition
from segue.engine.policies import MigrationPolicy
from segue.engine.progress import Progress

MiB = 2**20
VM = "web1"
SPEC = VMSpecBody(name=VM, datastore="shared", memory_mib=256)


def q(status: str, transferred: int = 0, remaining: int = 0, iteration: int = 1,
      dirty_pages: float = 0.0, mbps: float = 800.0, **more: object) -> QueryMigrate:
    """One ``query-migrate`` answer (sizes in bytes)."""
    return QueryMigrate.model_validate({
        "status": status, **more,
        "ram": RamStats(transferred=transferred, remaining=remaining, total=256 * MiB,
                        mbps=mbps, dirty_pages_rate=dirty_pages, dirty_sync_count=iteration,
                        page_size=4096).model_dump(by_alias=True)})


def copying(*mib: int) -> list[QueryMigrate]:
    """``active`` answers with these MiB transferred (the copy moves on)."""
    return [q("active", m * MiB, (256 - m) * MiB) for m in mib]


def done(**more: object) -> QueryMigrate:
    return q("completed", 260 * MiB, 0, 2, downtime=12, **{"total-time": 2100,
                                                            "setup-time": 5, **more})


HAPPY = [*copying(10, 100, 200), done()]
UNREACHABLE = Unavailable("AGENT_UNREACHABLE", "the agent did not answer", "")


class FakeClock:
    """Virtual monotonic time: ``sleep`` moves it forward at once."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


@dataclass
class MemoryStore:
    """A JobStore in memory (one job)."""

    phase: Phase = Phase.CHECK
    transitions: list[tuple[Phase, Phase, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    samples: list[tuple[float, Progress]] = field(default_factory=list)
    summary: dict[str, JsonValue] = field(default_factory=dict)
    location: tuple[str, str] | None = None
    location_generation: int | None = None
    reason: str | None = None
    error_code: str | None = None

    async def transition(self, job_id: str, target: Phase, message: str = "", *,
                         reason: str | None = None, error_code: str | None = None) -> None:
        check_transition(self.phase, target)
        self.transitions.append((self.phase, target, message))
        self.phase = target
        self.reason = reason if reason is not None else self.reason
        self.error_code = error_code if error_code is not None else self.error_code

    async def note(self, job_id: str, message: str) -> None:
        self.notes.append(message)

    async def record_sample(self, job_id: str, t: float, progress: Progress) -> None:
        self.samples.append((t, progress))

    async def set_summary(self, job_id: str, summary: dict[str, JsonValue]) -> None:
        self.summary = dict(summary)

    async def commit_location(self, vm: str, host: str, generation: int | None) -> None:
        self.location = (vm, host)
        self.location_generation = generation

    @property
    def phases(self) -> list[Phase]:
        """Every phase entered, in order."""
        return [to for _, to, _ in self.transitions]

    def noted(self, text: str) -> bool:
        return any(text in n for n in self.notes)


@dataclass
class Wire:
    """What both QEMUs share: the destination's state once the copy completed, and the
    host holding the VM's lease (``segue.agent.leases``: the destination takes it over when
    it runs the guest, i.e. when its events hold a RESUME; None: nobody claimed it here)."""

    dest_after: VMState = VMState.RUNNING
    lease_holder: str | None = None


Hook = Callable[[], object]  # may return an awaitable (awaited)


class FakeAgent:
    """One host's agent (see the module doc)."""

    def __init__(self, host: str, wire: Wire, vms: dict[str, VMState] | None = None) -> None:
        self.host = host
        self.wire = wire
        self.peer: FakeAgent | None = None
        self.vms: dict[str, VMState] = dict(vms or {})
        self.calls: list[str] = []
        self.script: list[QueryMigrate] = []
        self.after_postcopy: list[QueryMigrate] = [q("postcopy-active", 200 * MiB), done()]
        self.after_resume: list[QueryMigrate] = [q("postcopy-active", 250 * MiB), done()]
        self.dirty_mibs: float = 1.0
        self.link_bps: float | None = 100 * MiB
        self.events_: list[VMEvent] = []
        self.probe_ok = True
        self.migrating = False  # migrate was accepted: the script answers from here
        self.handover: tuple[str, str] | None = None  # (destination, migration) of migrate
        self.tls_peer: str | None = None  # the host a prepare admitted over TLS
        self.tls: bool | None = None  # what migrate was asked (None: not asked)
        self.tls_answer: bool | None = None  # what migrate answers (None: what it was asked)
        self.drives = False  # the source: its statuses move both sides' run states
        self.held: int | None = None  # the lease generation this host holds the VM at
        self.tokens: list[tuple[str, int | None]] = []  # (method, generation it named)
        self.last_status: MigrationStatus | None = None  # side effects on a change only
        self._errors: dict[str, list[SegueError]] = {}
        self._always: dict[str, SegueError] = {}
        self._hooks: dict[str, list[Hook]] = {}

    # ---- test controls ----
    def fail(self, method: str, error: SegueError = UNREACHABLE,
             times: int | None = None) -> None:
        if times is None:
            self._always[method] = error
        else:
            self._errors[method] = [error] * times

    def heal(self, method: str) -> None:
        self._always.pop(method, None)
        self._errors.pop(method, None)

    def on(self, method: str, hook: Hook) -> None:
        self._hooks.setdefault(method, []).append(hook)

    def count(self, method: str) -> int:
        return self.calls.count(method)

    async def _call(self, method: str) -> None:
        self.calls.append(method)
        for hook in self._hooks.pop(method, []):
            if inspect.isawaitable(answer := hook()):
                await answer
        if method in self._always:
            raise self._always[method]
        pending = self._errors.get(method)
        if pending:
            raise pending.pop()

    def _fence(self, method: str, generation: int | None) -> None:
        """The agent's fencing guard: a generation other than the one held is refused."""
        self.tokens.append((method, generation))
        if generation is not None and generation != self.held:
            raise Conflict("VM_NOT_OWNED", f"the caller expects generation {generation}, "
                           f"{self.host} holds {self.held}", "refresh the VM's record")

    def _info(self, name: str) -> VMInfo:
        if name not in self.vms:
            raise NotFound("VM_NOT_FOUND", f"no VM {name} on {self.host}", "")
        return VMInfo(name=name, uuid="u", host=self.host, state=self.vms[name], role="owner",
                      generation=self.held, spec=SPEC)

    def _view(self, name: str, status: QueryMigrate | None = None) -> MigrationView:
        return MigrationView(name=name, role="source", state=self.vms.get(name, VMState.STOPPED),
                             migration=status or QueryMigrate())

    def _next_status(self, name: str) -> QueryMigrate:
        if not self.migrating:
            return QueryMigrate()
        status = self.script.pop(0) if len(self.script) > 1 else (
            self.script[0] if self.script else QueryMigrate())
        changed, self.last_status = status.status != self.last_status, status.status
        if not self.drives or not changed:
            return status
        if status.status == MigrationStatus.COMPLETED and name in self.vms:
            self.vms[name] = VMState.POSTMIGRATE
            if self.peer is not None and name in self.peer.vms:
                self.peer.vms[name] = self.wire.dest_after
                if any(e.event == "RESUME" for e in self.peer.events_):
                    self.wire.lease_holder = self.peer.host  # it took the VM over and ran
        elif status.status.postcopy and self.peer is not None and name in self.peer.vms:
            self.vms[name] = VMState.PAUSED
            self.peer.vms[name] = VMState.RUNNING
            self.wire.lease_holder = self.peer.host
        return status

    # ---- AgentPort ----
    async def get_vm(self, name: str) -> VMInfo:
        await self._call("get_vm")
        return self._info(name)

    async def events(self, name: str, since: int = 0) -> list[VMEvent]:
        await self._call("events")
        return list(self.events_)

    async def resume_vm(self, name: str, generation: int | None = None) -> VMInfo:
        await self._call("resume_vm")
        self._fence("resume_vm", generation)
        if self.wire.lease_holder not in (None, self.host):
            raise Conflict("VM_NOT_OWNED", f"{self.wire.lease_holder} holds {name}'s lease",
                           "never run it here")
        self.vms[name] = VMState.RUNNING
        return self._info(name)

    async def prepare_incoming(self, spec: VMSpecBody, migration_id: str,
                               capabilities: Capabilities, parameters: Parameters,
                               tls_peer: str | None = None) -> IncomingAnswer:
        await self._call("prepare_incoming")
        self.vms[spec.name] = VMState.INMIGRATE
        self.tls_peer = tls_peer
        return IncomingAnswer(uri="tcp:10.0.1.2:4444", pid=99, state=VMState.INMIGRATE,
                              tls=tls_peer is not None)

    async def abort_incoming(self, name: str) -> None:
        await self._call("abort_incoming")
        if name not in self.vms:
            raise NotFound("VM_NOT_FOUND", f"no VM {name} on {self.host}", "")
        if self.vms[name] == VMState.RUNNING:  # as the agent: it ran guest code here
            raise Conflict("VM_RUNNING", f"{name} runs on {self.host}", "claim it")
        del self.vms[name]

    async def claim(self, name: str) -> VMInfo:
        await self._call("claim")
        return self._info(name)

    async def recover_incoming(self, name: str) -> RecoverAnswer:
        await self._call("recover_incoming")
        return RecoverAnswer(uri="tcp:10.0.1.2:4445")

    async def open_probe_listener(self, sink: bool = False) -> ProbeListener:
        await self._call("open_probe_listener")
        return ProbeListener(address="10.0.1.2", port=40000)

    async def start_migration(self, name: str, uri: str, capabilities: Capabilities,
                              parameters: Parameters, *, migration_id: str,
                              destination: str, generation: int | None = None,
                              tls: bool = False) -> MigrationView:
        await self._call("start_migration")
        self._fence("start_migration", generation)
        self.handover = (destination, migration_id)
        self.migrating = True
        self.tls = tls
        answer = tls if self.tls_answer is None else self.tls_answer
        return self._view(name).model_copy(update={"tls": answer})

    async def migration_status(self, name: str) -> MigrationView:
        await self._call("migration_status")
        return self._view(name, self._next_status(name))

    async def cancel_migration(self, name: str, generation: int | None = None
                               ) -> MigrationView:
        await self._call("cancel_migration")
        self._fence("cancel_migration", generation)
        self.script = [q("cancelled")]
        return self._view(name)

    async def release(self, name: str) -> None:
        await self._call("release")
        del self.vms[name]

    async def dirty_rate(self, name: str, calc_time_ms: int = 300) -> DirtyRateAnswer:
        await self._call("dirty_rate")
        return DirtyRateAnswer(dirty_rate_mibs=self.dirty_mibs, calc_time_ms=calc_time_ms)

    async def set_migration_parameters(self, name: str, parameters: Parameters
                                       ) -> dict[str, JsonValue]:
        await self._call("set_migration_parameters")
        return dict(parameters)

    async def start_postcopy(self, name: str) -> MigrationView:
        await self._call("start_postcopy")
        self.script = list(self.after_postcopy)
        return self._view(name)

    async def pause_migration(self, name: str) -> MigrationView:
        await self._call("pause_migration")
        return self._view(name)

    async def resume_migration(self, name: str, uri: str) -> MigrationView:
        await self._call("resume_migration")
        self.script = list(self.after_resume)
        return self._view(name)

    async def probe_migration_path(self, address: str, port: int) -> ProbeAnswer:
        await self._call("probe_migration_path")
        return ProbeAnswer(ok=self.probe_ok, error=None if self.probe_ok else "timed out")

    async def measure_throughput(self, address: str, port: int,
                                 seconds: float = 0.3) -> ThroughputAnswer:
        await self._call("measure_throughput")
        if self.link_bps is None:
            return ThroughputAnswer(ok=False, error="connection refused")
        return ThroughputAnswer(ok=True, bytes_per_s=self.link_bps)


def host_facts(name: str) -> HostFacts:
    return HostFacts(name=name,
                     cpu=CpuFacts(host_model="x", accel="kvm", accel_reason="", logical_cpus=4),
                     memory=MemoryFacts(total_mib=16384, available_mib=8192),
                     qemu=QemuFacts(binary="qemu", version="10.0.0"),
                     migration=MigrationNicFacts(interface="mig0", present=True, up=True,
                                                 addresses=["10.0.1.1/24"], speed_mbps=1000))


@dataclass
class FakeFacts:
    missing: set[str] = field(default_factory=set)

    async def host_facts(self, host: str) -> HostFacts:
        if host in self.missing:
            raise NotFound("HOST_NOT_FOUND", f"no host named {host}", "")
        return host_facts(host)


class World:
    """Both agents (``src`` runs the VM, ``dst`` is empty), the store, facts and clock."""

    def __init__(self, script: list[QueryMigrate] | None = None,
                 phase: Phase = Phase.CHECK) -> None:
        self.wire = Wire()
        self.clock = FakeClock()
        self.store = MemoryStore(phase=phase)
        self.facts = FakeFacts()
        self.src = FakeAgent("host1", self.wire, {VM: VMState.RUNNING})
        self.dst = FakeAgent("host2", self.wire)
        self.src.peer, self.dst.peer = self.dst, self.src
        self.src.drives = True
        self.src.script = list(HAPPY if script is None else script)
        self.src.events_ = [VMEvent(seq=1, event="STOP", timestamp=500.0)]
        self.dst.events_ = [VMEvent(seq=1, event="RESUME", timestamp=500.05)]

    def job(self, options: MigrationOptionsBody | None = None,
            policy: MigrationPolicy | None = None, phase: Phase | None = None,
            generation: int | None = None) -> MigrationJob:
        """The job; ``generation``: the one on record at admission (its fencing token)."""
        spec = JobSpec("job-1", VM, "host1", "host2", options or MigrationOptionsBody(),
                       generation)
        ports = Ports(self.src, self.dst, self.store, self.facts, self.clock)
        return MigrationJob(spec, ports, policy, phase or self.store.phase)

    def running_on(self) -> list[str]:
        """The hosts whose QEMU runs the VM now (never two)."""
        return [a.host for a in (self.src, self.dst) if a.vms.get(VM) == VMState.RUNNING]
