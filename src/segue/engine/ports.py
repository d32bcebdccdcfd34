"""What the migration job needs of the world, as small Protocols (no HTTP, no SQL here).

- ``AgentPort``: one host agent (the controller's ``segue.clients.agent.AgentClient``
  satisfies it; tests use in-memory fakes). Every method raises ``SegueError``: ``NotFound``
  for an unknown VM, ``Unavailable`` (``AGENT_UNREACHABLE``) when the agent does not answer,
  the agent's own error otherwise. ``generation`` (migrate, cancel, resume): the lease
  generation the job expects the source to hold the VM at, its fencing token (the agent
  refuses another with ``VM_NOT_OWNED``); None sends none. ``tls_peer`` (prepare) and
  ``tls`` (migrate): the stream is TLS, the destination admitting the source host alone and
  the source checking the destination's name (``MIGRATION_TLS_UNAVAILABLE`` from a host
  without credentials).
- ``JobStore``: where the job's record lives (phase transitions, notes, samples, summary) and
  where the VM's location is committed.
- ``FactsSource``: the hosts' last facts.
- ``Clock``: monotonic time and sleeping (``MonotonicClock`` for real; a fake in tests).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

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
from segue.api.vm import VMInfo, VMSpecBody
from segue.domain.host import HostFacts
from segue.engine.phases import Phase
from segue.engine.progress import Progress


class AgentPort(Protocol):
    """The calls a migration makes on one host agent."""

    async def get_vm(self, name: str) -> VMInfo: ...
    async def events(self, name: str, since: int = 0) -> list[VMEvent]: ...
    async def resume_vm(self, name: str, generation: int | None = None) -> VMInfo: ...

    # destination
    async def prepare_incoming(self, spec: VMSpecBody, migration_id: str,
                               capabilities: Capabilities, parameters: Parameters,
                               tls_peer: str | None = None) -> IncomingAnswer: ...
    async def abort_incoming(self, name: str) -> None: ...
    async def claim(self, name: str) -> VMInfo: ...
    async def recover_incoming(self, name: str) -> RecoverAnswer: ...
    async def open_probe_listener(self, sink: bool = False) -> ProbeListener: ...

    # source
    async def start_migration(self, name: str, uri: str, capabilities: Capabilities,
                              parameters: Parameters, *, migration_id: str,
                              destination: str, generation: int | None = None,
                              tls: bool = False) -> MigrationView: ...
    async def migration_status(self, name: str) -> MigrationView: ...
    async def cancel_migration(self, name: str, generation: int | None = None
                               ) -> MigrationView: ...
    async def release(self, name: str) -> None: ...
    async def dirty_rate(self, name: str, calc_time_ms: int = 300) -> DirtyRateAnswer: ...
    async def set_migration_parameters(self, name: str, parameters: Parameters
                                       ) -> dict[str, JsonValue]: ...
    async def start_postcopy(self, name: str) -> MigrationView: ...
    async def pause_migration(self, name: str) -> MigrationView: ...
    async def resume_migration(self, name: str, uri: str) -> MigrationView: ...
    async def probe_migration_path(self, address: str, port: int) -> ProbeAnswer: ...
    async def measure_throughput(self, address: str, port: int,
                                 seconds: float = 0.3) -> ThroughputAnswer: ...


class JobStore(Protocol):
    """The job's record. ``transition`` checks the phase table (``segue.engine.phases``) and
    raises ``InvalidTransition`` on a wrong move; ``commit_location`` records that ``vm``
    now runs on ``host`` at lease ``generation`` (the one the destination's claim answered;
    None: unknown until the host reports it), the move's last word in the inventory. Every
    method is awaited: a store that does I/O must not stop the job's event loop (the
    controller's runs each call in its database's worker thread); each call is done, whole,
    when it returns."""

    async def transition(self, job_id: str, target: Phase, message: str = "", *,
                         reason: str | None = None, error_code: str | None = None) -> None: ...
    async def note(self, job_id: str, message: str) -> None: ...
    async def record_sample(self, job_id: str, t: float, progress: Progress) -> None: ...
    async def set_summary(self, job_id: str, summary: dict[str, JsonValue]) -> None: ...
    async def commit_location(self, vm: str, host: str, generation: int | None) -> None: ...


class FactsSource(Protocol):
    """The hosts' last facts (awaited, like the store)."""

    async def host_facts(self, host: str) -> HostFacts: ...


class Clock(Protocol):
    """Monotonic seconds, and sleeping on the same clock."""

    def now(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
