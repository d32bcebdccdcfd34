"""Configuration of one host agent: a TOML file, ``/etc/segue/agent.toml`` by default.

Example (``docs/examples/agent.toml``)::

    host = "host1"
    state_dir = "/var/lib/segue/host1"
    migration_interface = "mig0"
    accel = "auto"
    controller_url = "http://10.210.0.2:7700"
    heartbeat_interval = 2.0
    cpu_exclude_features = ["avx2", "aes"]

    [listen]
    address = "10.210.0.11"
    port = 7600
    unix_socket = "/var/lib/segue/host1/agent.sock"

    [port_groups]
    vm-net = "br-vm-net"

    [datastores]
    shared = "/srv/segue/datastores/shared"

``host`` and ``state_dir`` are required; every other key has a default.
``port_groups`` maps a port group name to the bridge that carries it on this host;
``datastores`` maps a datastore name to the directory where this host mounts it;
``image_dirs`` lists the directories a VM's kernel and initrd may come from besides the
datastores (default: the image cache ``segue image build`` writes, ``<SEGUE_HOME>/images``,
``/var/lib/segue/images`` unless ``$SEGUE_HOME`` says otherwise); the agent refuses any VM
file outside them (``segue.agent.confine``);
``accel`` is ``auto`` (KVM where it can run a stock guest, else TCG), ``kvm`` or ``tcg``.
``qemu_sandbox`` (true) starts every QEMU under its seccomp filter (``segue.qemu.argv``,
docs/security.md); turn it off only to debug a QEMU that the filter kills.
With ``controller_url`` (``http(s)://...`` or ``unix:PATH``) the agent sends the controller
a heartbeat every ``heartbeat_interval`` seconds, saying it is reachable at
``advertise_url`` (default: ``https://<listen.address>:<listen.port>`` with ``pki_dir``,
else ``http://...``).
``pki_dir``: the host's credential directory (``segue.security.store``, written by
``segue agent join``). With it the agent serves HTTPS on ``listen.address`` and takes
commands there only from the controller's certificate (``segue.agent.peergate``), sends its
heartbeats with its own certificate, and encrypts migrations with it. Without it the agent
refuses to listen on a TCP address unless ``insecure_plain_http`` is true: plain HTTP lets
any client on that network command the agent as root. The unix socket is root's either way.
``lease_duration_s`` (15) is how long a VM's lease on shared storage lasts unrenewed and
``lease_renew_s`` (3) how often the agent renews it (``segue.agent.leases``): an agent that
has not renewed a lease for ``lease_duration_s - 2 x lease_renew_s`` (at most 80 % of the
lease: 9 s by default) stops the VM, and the VM's lease guardian (``segue.agent.guardian``)
kills it when the agent is gone, halfway from there to the expiry (``guard_margin``: 3 s
before it, 12 s after the last renewal, by default).
``cpu_exclude_features`` makes the host offer a smaller CPU feature set, as an older host
would: its facts omit those features, every QEMU it starts gets ``-feat`` for each, and it
refuses VMs whose ``cpu_model`` asks for one explicitly (``segue.agent.admission``).

Environment variables override single keys: ``SEGUE_AGENT_HEARTBEAT_INTERVAL=1``,
``SEGUE_AGENT_LISTEN__PORT=7601`` (``segue.settings`` says how they are read).

Errors: ``InvalidRequest`` ``AGENT_CONFIG_MISSING`` (no file) or ``AGENT_CONFIG_INVALID``
(unreadable TOML, an unknown key, a wrong type or value), naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from segue.paths import image_cache_dir
from segue.settings import (
    ConfigPath,
    ListenConfig,
    ServiceSettings,
    load_settings,
    settings_from_dict,
)

AGENT_CONFIG_PATH = Path("/etc/segue/agent.toml")

# A QEMU CPU feature name; anything else (a comma above all) would change the -cpu option.
FeatureName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)]


class AgentConfig(ServiceSettings):
    """One host agent's configuration (see the module doc)."""

    model_config = SettingsConfigDict(env_prefix="SEGUE_AGENT_")
    config_code: ClassVar[str] = "AGENT_CONFIG"
    what: ClassVar[str] = "agent"

    host: str = Field(min_length=1, max_length=64, description="this host's name")
    state_dir: ConfigPath = Field(description="the directory of the agent's files and VMs")
    listen: ListenConfig = ListenConfig()
    port_groups: dict[str, str] = Field(
        default_factory=dict, description="port group name -> bridge on this host")
    datastores: dict[str, ConfigPath] = Field(
        default_factory=dict, description="datastore name -> directory where it is mounted")
    image_dirs: list[ConfigPath] = Field(
        default_factory=lambda: [image_cache_dir()],
        description="absolute directories a VM's kernel and initrd may come from (besides "
        "the datastores)")
    migration_interface: str | None = None
    accel: Literal["auto", "kvm", "tcg"] = Field("auto", description="use auto, kvm or tcg")
    qemu_binary: str = "qemu-system-x86_64"
    qemu_sandbox: bool = Field(
        True, description="confine every QEMU by its seccomp filter (-sandbox): no fork, "
        "exec, set*uid or obsolete system calls")
    controller_url: str | None = None
    advertise_url: str | None = None
    pki_dir: ConfigPath | None = Field(None, description=(
        "this host's credential directory (segue agent join writes it): HTTPS on the "
        "listen address, heartbeats with the host's certificate, encrypted migrations"))
    insecure_plain_http: bool = Field(False, description=(
        "serve plain HTTP on listen.address without credentials: any client on that "
        "network may command this agent as root (isolated test networks only)"))
    heartbeat_interval: float = Field(
        2.0, gt=0, le=3600, description="seconds between heartbeats: more than 0, at most 3600")
    lease_duration_s: float = Field(
        15.0, ge=3, le=600, description="seconds a VM's lease on shared storage lasts "
        "unrenewed: at least 3, at most 600")
    lease_renew_s: float = Field(
        3.0, gt=0, le=120, description="seconds between lease renewals: more than 0, at most "
        "120, and under a third of lease_duration_s")
    cpu_exclude_features: list[FeatureName] = Field(
        default_factory=list,
        description="use QEMU's lowercase feature names, e.g. avx2, aes, sse4.2")

    @field_validator("image_dirs")
    @classmethod
    def _absolute_image_dirs(cls, paths: list[Path]) -> list[Path]:
        for path in paths:
            if not path.is_absolute():
                raise ValueError(f"{str(path)!r} is not an absolute path")
        return paths

    @model_validator(mode="after")
    def _check_leases(self) -> AgentConfig:
        if self.lease_renew_s * 3 > self.lease_duration_s:
            raise ValueError(f"lease_renew_s ({self.lease_renew_s}) must be under a third of "
                             f"lease_duration_s ({self.lease_duration_s}): a renewal or two "
                             "may fail before the VM must be stopped")
        return self

    @model_validator(mode="after")
    def _derive_advertise_url(self) -> AgentConfig:
        """The URL the controller reaches this agent at (needed only with a controller)."""
        if self.advertise_url or not self.controller_url:
            return self
        if self.listen.address is None:
            raise ValueError("controller_url is set but the agent has neither advertise_url "
                             "nor listen.address: add advertise_url, the URL at which the "
                             "controller reaches this agent")
        # Derived once here; the model is frozen for everyone else.
        scheme = "https" if self.pki_dir is not None else "http"
        object.__setattr__(self, "advertise_url",
                           f"{scheme}://{self.listen.address}:{self.listen.port}")
        return self

    @property
    def vms_dir(self) -> Path:
        return self.state_dir / "vms"


def config_from_dict(data: dict[str, Any]) -> AgentConfig:
    """A config from data shaped like the TOML file; raises InvalidRequest
    (``AGENT_CONFIG_INVALID``) naming the bad key."""
    return settings_from_dict(AgentConfig, data)


def load_config(path: Path | None = None) -> AgentConfig:
    """Read the agent's TOML file (default ``AGENT_CONFIG_PATH``) with environment overrides;
    raises InvalidRequest (``AGENT_CONFIG_MISSING``/``AGENT_CONFIG_INVALID``, the latter also
    when the file gives nothing to listen on)."""
    path = path or AGENT_CONFIG_PATH
    config = load_settings(AgentConfig, path)
    config.listen.require("AGENT_CONFIG_INVALID", str(path))
    return config


__all__ = ["AGENT_CONFIG_PATH", "AgentConfig", "ListenConfig", "config_from_dict",
           "load_config"]
