"""Configuration of the controller: a TOML file, ``/etc/segue/controller.toml`` by default.

Example (``docs/examples/controller.toml``)::

    database_url = "sqlite:////var/lib/segue/controller.db"
    heartbeat_timeout = 10.0
    max_outgoing_per_host = 2
    max_incoming_per_host = 2
    max_auto_downtime_ms = 300

    pki_dir = "/var/lib/segue/pki"

    [listen]
    address = "10.210.0.2"
    port = 7700
    unix_socket = "/var/lib/segue/controller.sock"

    [audit]
    max_age_days = 365
    max_entries = 1000000

``database_url`` (required) is any SQLAlchemy URL: a SQLite file, or PostgreSQL
(``postgresql+psycopg://...``) for several controllers sharing one database.
``create_database`` (false): an empty database (a new one, or one deleted under a running
cluster) stops the controller with ``DATABASE_EMPTY`` unless this is true (or
``segue server --create-database``), so that a cluster is created only on request.
``heartbeat_timeout``: seconds without a heartbeat after which a host counts as disconnected.
``max_outgoing_per_host`` / ``max_incoming_per_host``: migrations that may run at once out of
and into each host (default 2 each); further requests are queued in order
(``segue.controller.scheduler``). ``max_auto_downtime_ms``: the cluster's downtime bound,
the highest downtime target the migration policy chooses or escalates to by itself for a
migration that does not set its own ``max_downtime_ms`` (``segue.engine.policy``; default
300 ms, 1 to 60000). ``listen.port`` defaults to 7700.

Access (``docs/security.md``): every request over TCP needs credentials, a bearer API token
or a client certificate of the cluster; the unix socket is root's (``local``). ``pki_dir``
(none by default): the controller's credential directory (``segue.security.store``); client
certificates are verified against ``<pki_dir>/ca/ca-cert.pem``, and without it none is
accepted. With the controller's own credential set in ``pki_dir`` (``segue cluster
init``) the TCP listener speaks HTTPS, and the controller reaches agents over HTTPS with its
certificate; without one it refuses to listen on TCP unless ``insecure_plain_http`` is true.
``insecure_host_heartbeats`` (false): also take heartbeats that come with no
credentials at all, from an "unverified" host, for agents that cannot present a certificate
yet (the lab, until its agents speak mutual TLS); never on a cluster that matters.
``audit.max_age_days`` (365) and ``audit.max_entries`` (1000000): the audit log keeps
entries that young and at most that many, pruned every ``AUDIT_PRUNE_INTERVAL`` s.

Environment variables override single keys: ``SEGUE_CONTROLLER_DATABASE_URL=...``,
``SEGUE_CONTROLLER_LISTEN__ADDRESS=...`` (``segue.settings`` says how they are read).

Errors: ``InvalidRequest`` ``CONTROLLER_CONFIG_MISSING`` (no file),
``CONTROLLER_CONFIG_INVALID`` (unreadable TOML, an unknown key, a wrong type or value) or
``MIGRATION_LIMIT_INVALID`` (a per-host limit below 1), naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from segue.api.base import CONTROLLER_PORT
from segue.controller.scheduler import HostLimits
from segue.engine.policy import DEFAULT_MAX_AUTO_DOWNTIME_MS
from segue.settings import (
    ConfigPath,
    ListenConfig,
    Port,
    ServiceSettings,
    load_settings,
    settings_from_dict,
)

CONTROLLER_CONFIG_PATH = Path("/etc/segue/controller.toml")
_LIMIT = "a number of migrations at once, at least 1"
AUDIT_PRUNE_INTERVAL = 3600.0  # seconds between two prunings of the audit log


class ControllerListen(ListenConfig):
    """The controller's listen table: as the agent's, on port 7700 by default."""

    port: Port = Field(CONTROLLER_PORT, description="a TCP port, 1 to 65535")


class AuditConfig(BaseModel):
    """How long the audit log keeps its entries (see the module doc)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    max_age_days: float = Field(365.0, gt=0, le=36500, description=(
        "days an audit entry is kept, more than 0, at most 100 years"))
    max_entries: int = Field(1_000_000, ge=100, le=10**9, description=(
        "entries the audit log keeps at most (the oldest go first), at least 100"))


class ControllerConfig(ServiceSettings):
    """The controller's configuration (see the module doc)."""

    model_config = SettingsConfigDict(env_prefix="SEGUE_CONTROLLER_")
    config_code: ClassVar[str] = "CONTROLLER_CONFIG"
    what: ClassVar[str] = "controller"
    key_codes: ClassVar[dict[str, str]] = {"max_outgoing_per_host": "MIGRATION_LIMIT_INVALID",
                                           "max_incoming_per_host": "MIGRATION_LIMIT_INVALID"}

    database_url: str = Field(min_length=1, description=(
        "a SQLAlchemy URL, e.g. sqlite:////var/lib/segue/controller.db"))
    create_database: bool = Field(False, description=(
        "true only for a new cluster: an empty database gets a schema (never a deleted one)"))
    listen: ControllerListen = ControllerListen()
    heartbeat_timeout: float = Field(10.0, gt=0, le=86400, description=(
        "seconds without a heartbeat before a host is disconnected: more than 0"))
    max_outgoing_per_host: int = Field(2, ge=1, le=1024, description=_LIMIT)
    max_incoming_per_host: int = Field(2, ge=1, le=1024, description=_LIMIT)
    max_auto_downtime_ms: int = Field(
        DEFAULT_MAX_AUTO_DOWNTIME_MS, ge=1, le=60_000, description=(
            "the highest downtime target (ms) the migration policy may choose by itself, "
            "1 to 60000"))

    pki_dir: ConfigPath | None = Field(None, description=(
        "the controller's credential directory; client certificates are verified against "
        "its ca/ca-cert.pem"))
    insecure_plain_http: bool = Field(False, description=(
        "serve plain HTTP on listen.address when pki_dir holds no credentials: tokens and "
        "heartbeats cross the network in clear (isolated test networks only)"))
    insecure_host_heartbeats: bool = Field(False, description=(
        "take heartbeats without credentials (agents without certificates: the lab only)"))
    ca_rotation_grace_s: float = Field(900.0, ge=0, le=7 * 86400, description=(
        "seconds after a CA rotation starts before the new CA issues hosts' certificates: "
        "every host fetches the new trust bundle first (agents look every 5 minutes)"))
    audit: AuditConfig = AuditConfig()

    @property
    def limits(self) -> HostLimits:
        """The per-host migration limits the scheduler applies."""
        return HostLimits(self.max_outgoing_per_host, self.max_incoming_per_host)


def controller_config_from_dict(data: dict[str, Any]) -> ControllerConfig:
    """A config from data shaped like the TOML file; raises InvalidRequest naming the bad key
    (``CONTROLLER_CONFIG_INVALID``; ``MIGRATION_LIMIT_INVALID`` for a limit below 1)."""
    return settings_from_dict(ControllerConfig, data)


def load_controller_config(path: Path | None = None) -> ControllerConfig:
    """Read the controller's TOML file (default ``CONTROLLER_CONFIG_PATH``) with environment
    overrides; raises InvalidRequest (``CONTROLLER_CONFIG_MISSING`` and as above;
    ``CONTROLLER_CONFIG_INVALID`` also when the file gives nothing to listen on)."""
    path = path or CONTROLLER_CONFIG_PATH
    config = load_settings(ControllerConfig, path)
    config.listen.require("CONTROLLER_CONFIG_INVALID", str(path))
    return config
