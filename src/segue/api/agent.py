"""The host agent's bodies: migration, network probes, events (``segue.agent.app``).

The controller's migration engine reads these through ``segue.engine.ports.AgentPort``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, JsonValue

from segue.api.base import Name, NonNegFloat, Port, RequestModel, ResponseModel, ShortText
from segue.api.qemu import QueryMigrate
from segue.api.vm import VMSpecBody
from segue.domain.vm import VMState

# QEMU migration parameters by QEMU's own names (``downtime-limit``, ``max-bandwidth``,
# ``announce-initial``, ...) and capabilities by name; values are numbers, flags or strings.
ParameterValue = int | bool | str
Parameters = Annotated[dict[Annotated[str, Field(max_length=64)], ParameterValue],
                       Field(max_length=64)]
Capabilities = Annotated[dict[Annotated[str, Field(max_length=64)], bool], Field(max_length=64)]
MigrationUri = Annotated[str, Field(min_length=5, max_length=300)]


class IncomingRequest(RequestModel):
    """Destination: start QEMU for ``spec`` with ``-incoming defer`` and listen.
    ``tls_peer``: listen for TLS only, admitting the certificate of this host alone (the
    migration's source); None: a plain stream."""

    spec: VMSpecBody
    migration_id: Annotated[str, Field(min_length=1, max_length=64)]
    capabilities: Capabilities = {}
    parameters: Parameters = {}
    tls_peer: Name | None = None


class IncomingAnswer(ResponseModel):
    """Where the destination listens (``tcp:IP:PORT``) and its QEMU; ``tls``: whether it
    listens for TLS (its QEMU's ``tls-creds`` is set)."""

    uri: str
    pid: int | None = None
    state: VMState
    migration_id: str | None = None
    announce: dict[str, JsonValue] = {}
    tls: bool = False


class MigrateRequest(RequestModel):
    """Source: migrate to the destination's ``uri`` with these settings; the VM's lease is
    handed over to host ``destination`` for migration ``migration_id`` (the destination
    takes it over before the guest runs there)."""

    uri: MigrationUri
    capabilities: Capabilities = {}
    parameters: Parameters = {}
    migration_id: Annotated[str, Field(min_length=1, max_length=64)]
    destination: Annotated[str, Field(min_length=1, max_length=64)]
    # TLS, the destination's certificate checked for its host name (False: a plain stream)
    tls: bool = False


class ParametersRequest(RequestModel):
    parameters: Parameters


class ParametersAnswer(ResponseModel):
    """QEMU's ``query-migrate-parameters`` after a change, by QEMU's names."""

    parameters: dict[str, JsonValue]


class ResumeRequest(RequestModel):
    uri: MigrationUri


class RecoverAnswer(ResponseModel):
    uri: str


class MigrationView(ResponseModel):
    """A VM's migration as its host sees it: role, run state and QEMU's own answer.
    ``tls``: whether QEMU's ``tls-creds`` was set as the migration started (the answer to
    ``migrate`` only; None elsewhere)."""

    name: str
    role: str
    state: VMState
    migration_id: str | None = None
    migration: QueryMigrate = Field(default_factory=QueryMigrate)
    tls: bool | None = None


class DirtyRateAnswer(ResponseModel):
    dirty_rate_mibs: NonNegFloat
    calc_time_ms: int


class ProbeListener(ResponseModel):
    """A one-shot TCP listener on a host's migration address."""

    address: str
    port: int


class ProbeRequest(RequestModel):
    address: ShortText
    port: Port


class ThroughputRequest(ProbeRequest):
    seconds: Annotated[float, Field(gt=0, le=5)] = 0.3


class ProbeAnswer(ResponseModel):
    """A TCP connect from this host's migration address (``ok`` False with the reason)."""

    ok: bool
    rtt_ms: float | None = None
    error: str | None = None
    source_address: str | None = None


class ThroughputAnswer(ResponseModel):
    """The link's rate as the destination counted a short stream."""

    ok: bool
    bytes_per_s: float | None = None
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None


class VMEvent(ResponseModel):
    """One QEMU event the agent recorded (``timestamp``: QEMU's, in seconds)."""

    seq: int
    event: str
    timestamp: float
    data: dict[str, JsonValue] = {}


class Health(ResponseModel):
    status: str
    version: str
    host: str | None = None


class SerialAnswer(ResponseModel):
    name: str
    lines: list[str]


class VMCpu(ResponseModel):
    """The ``-cpu`` value the VM's QEMU runs with and the features it enables."""

    model: str
    features: list[str]


class AdoptRequest(RequestModel):
    """Re-homing a stopped VM (``segue.agent.rehome``): take up its definition from
    ``from_host``, read from its home ``datastore``'s vm.json."""

    datastore: Name
    from_host: Name


class FileRef(RequestModel):
    """A file by datastore name and path inside it."""

    datastore: Annotated[str, Field(min_length=1, max_length=64)]
    path: Annotated[str, Field(min_length=1, max_length=1024)]


class FilesRequest(RequestModel):
    files: Annotated[list[FileRef], Field(max_length=64)]


class FileVisibility(ResponseModel):
    datastore: str
    path: str
    visible: bool


class FilesAnswer(ResponseModel):
    files: list[FileVisibility]
