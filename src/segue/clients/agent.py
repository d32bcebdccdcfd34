"""The client of one host agent (``segue.agent.app``), typed: it satisfies
``segue.engine.ports.AgentPort`` and adds the inventory and check calls.

Errors: the agent's own (same kind and code), ``Unavailable`` (``AGENT_UNREACHABLE``) when
it does not answer, ``AGENT_ERROR`` for an answer that is no Segue error,
``AGENT_ANSWER_INVALID`` for a body that does not fit its model (``segue.clients.base``).

Migration calls (the agent side of a live migration):
- ``prepare_incoming`` on the destination: QEMU with ``-incoming defer`` and the same device
  model, taps plugged, listening on the migration interface; ``IncomingAnswer.uri``.
- ``start_migration`` on the source; ``migration_status`` either side (role, run state and
  QEMU's ``query-migrate``); ``cancel_migration`` on the source; ``abort_incoming`` on the
  destination (kills the incoming QEMU; never a VM this host owns).
- ``claim`` on the destination once it runs; ``release`` on the source once the destination
  owns it; ``resume_vm`` on the source for a rollback.
- policy and post-copy: ``dirty_rate``, ``set_migration_parameters``, ``start_postcopy``,
  ``pause_migration``, ``resume_migration`` on the source, ``recover_incoming`` on the
  destination.
Check calls: ``vm_cpu``, ``open_probe_listener`` (``sink=True`` for a throughput sink),
``probe_migration_path``, ``measure_throughput``, ``files_visible``.

``generation`` (start, stop, destroy, resume, migrate, cancel): the VM's lease generation
as the caller knows it, the fencing token the agent checks (``segue.agent.guards``); None
sends none.
"""

from __future__ import annotations

from pydantic import JsonValue

from segue.api.agent import (
    AdoptRequest,
    Capabilities,
    DirtyRateAnswer,
    FileRef,
    FilesAnswer,
    FilesRequest,
    FileVisibility,
    Health,
    IncomingAnswer,
    IncomingRequest,
    MigrateRequest,
    MigrationView,
    Parameters,
    ParametersAnswer,
    ParametersRequest,
    ProbeAnswer,
    ProbeListener,
    ProbeRequest,
    RecoverAnswer,
    ResumeRequest,
    SerialAnswer,
    ThroughputAnswer,
    ThroughputRequest,
    VMCpu,
    VMEvent,
)
from segue.api.vm import VMInfo, VMSpecBody
from segue.clients.base import QueryParams, ServiceClient
from segue.domain.host import HostFacts

__all__ = ["AgentClient", "ParametersAnswer"]  # ParametersAnswer: re-exported, it lived here


class AgentClient(ServiceClient):
    """Talks to one agent at ``url`` (``http(s)://...`` or ``unix:PATH``)."""

    service = "agent"

    async def health(self) -> Health:
        return await self.call(Health, "GET", "/health")

    async def facts(self) -> HostFacts:
        return await self.call(HostFacts, "GET", "/host")

    # ---- VMs ----
    async def get_vm(self, name: str) -> VMInfo:
        return await self.call(VMInfo, "GET", f"/vms/{name}")

    async def list_vms(self) -> list[VMInfo]:
        return await self.call_list(VMInfo, "GET", "/vms")

    async def define_vm(self, spec: VMSpecBody, start: bool = False) -> VMInfo:
        return await self.call(VMInfo, "POST", "/vms", json=spec,
                               params={"start": "true" if start else "false"})

    async def start_vm(self, name: str, generation: int | None = None) -> VMInfo:
        """Start the VM; ``generation``: the lease generation believed current."""
        return await self.call(VMInfo, "POST", f"/vms/{name}/start",
                               params=_generation(generation))

    async def stop_vm(self, name: str, timeout: float = 30.0, force: bool = False,
                      generation: int | None = None) -> VMInfo:
        return await self.call(VMInfo, "POST", f"/vms/{name}/stop",
                               params={"timeout": timeout, "force": "true" if force else "false",
                                       **_generation(generation)})

    async def destroy_vm(self, name: str, generation: int | None = None) -> None:
        await self.request("DELETE", f"/vms/{name}", params=_generation(generation))

    async def resume_vm(self, name: str, generation: int | None = None) -> VMInfo:
        return await self.call(VMInfo, "POST", f"/vms/{name}/resume",
                               params=_generation(generation))

    async def events(self, name: str, since: int = 0) -> list[VMEvent]:
        return await self.call_list(VMEvent, "GET", f"/vms/{name}/events",
                                    params={"since": since})

    async def serial(self, name: str, lines: int = 50) -> list[str]:
        answer = await self.call(SerialAnswer, "GET", f"/vms/{name}/serial",
                                 params={"lines": lines})
        return answer.lines

    async def vm_cpu(self, name: str) -> VMCpu:
        return await self.call(VMCpu, "GET", f"/vms/{name}/cpu")

    async def files_visible(self, files: list[FileRef]) -> list[FileVisibility]:
        """Which files this host sees on its datastores."""
        answer = await self.call(FilesAnswer, "POST", "/datastores/files",
                                 json=FilesRequest(files=files))
        return answer.files

    # ---- destination ----
    async def prepare_incoming(self, spec: VMSpecBody, migration_id: str,
                               capabilities: Capabilities, parameters: Parameters,
                               tls_peer: str | None = None) -> IncomingAnswer:
        body = IncomingRequest(spec=spec, migration_id=migration_id,
                               capabilities=capabilities, parameters=parameters,
                               tls_peer=tls_peer)
        return await self.call(IncomingAnswer, "POST", "/migrations/incoming", json=body)

    async def abort_incoming(self, name: str) -> None:
        await self.request("POST", f"/vms/{name}/incoming/abort")

    async def claim(self, name: str) -> VMInfo:
        return await self.call(VMInfo, "POST", f"/vms/{name}/incoming/claim")

    async def recover_incoming(self, name: str) -> RecoverAnswer:
        return await self.call(RecoverAnswer, "POST", f"/migrations/incoming/{name}/recover")

    # ---- source ----
    async def start_migration(self, name: str, uri: str, capabilities: Capabilities,
                              parameters: Parameters, *, migration_id: str,
                              destination: str, generation: int | None = None,
                              tls: bool = False) -> MigrationView:
        body = MigrateRequest(uri=uri, capabilities=capabilities, parameters=parameters,
                              migration_id=migration_id, destination=destination, tls=tls)
        return await self.call(MigrationView, "POST", f"/vms/{name}/migrate", json=body,
                               params=_generation(generation))

    async def migration_status(self, name: str) -> MigrationView:
        return await self.call(MigrationView, "GET", f"/vms/{name}/migration")

    async def cancel_migration(self, name: str, generation: int | None = None
                               ) -> MigrationView:
        return await self.call(MigrationView, "POST", f"/vms/{name}/migration/cancel",
                               params=_generation(generation))

    async def release(self, name: str) -> None:
        await self.request("POST", f"/vms/{name}/release")

    async def adopt(self, name: str, datastore: str, from_host: str) -> VMInfo:
        """Re-homing a stopped VM: this host takes up its definition from ``from_host``."""
        return await self.call(VMInfo, "POST", f"/vms/{name}/adopt",
                               json=AdoptRequest(datastore=datastore, from_host=from_host))

    async def release_definition(self, name: str) -> None:
        """Re-homing a stopped VM: this host forgets its copy (another adopted it)."""
        await self.request("POST", f"/vms/{name}/release-definition")

    async def dirty_rate(self, name: str, calc_time_ms: int = 300) -> DirtyRateAnswer:
        return await self.call(DirtyRateAnswer, "POST", f"/vms/{name}/dirty-rate",
                               params={"calc_time_ms": calc_time_ms})

    async def set_migration_parameters(self, name: str, parameters: Parameters
                                       ) -> dict[str, JsonValue]:
        answer = await self.call(ParametersAnswer, "POST", f"/vms/{name}/migration/parameters",
                                 json=ParametersRequest(parameters=parameters))
        return answer.parameters

    async def start_postcopy(self, name: str) -> MigrationView:
        return await self.call(MigrationView, "POST", f"/vms/{name}/migration/postcopy")

    async def pause_migration(self, name: str) -> MigrationView:
        return await self.call(MigrationView, "POST", f"/vms/{name}/migration/pause")

    async def resume_migration(self, name: str, uri: str) -> MigrationView:
        return await self.call(MigrationView, "POST", f"/vms/{name}/migration/resume",
                               json=ResumeRequest(uri=uri))

    # ---- migration network ----
    async def open_probe_listener(self, sink: bool = False) -> ProbeListener:
        return await self.call(ProbeListener, "POST", "/migration-network/listen",
                               params={"sink": "true"} if sink else None)

    async def probe_migration_path(self, address: str, port: int) -> ProbeAnswer:
        return await self.call(ProbeAnswer, "POST", "/migration-network/probe",
                               json=ProbeRequest(address=address, port=port))

    async def measure_throughput(self, address: str, port: int,
                                 seconds: float = 0.3) -> ThroughputAnswer:
        return await self.call(ThroughputAnswer, "POST", "/migration-network/throughput",
                               json=ThroughputRequest(address=address, port=port,
                                                      seconds=seconds))


def _generation(generation: int | None) -> QueryParams:
    """The ``generation`` query of a state-changing call (the fencing token), if any."""
    return {"generation": generation} if generation is not None else {}
