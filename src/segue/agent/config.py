"""Configuration of one host agent, read from a JSON file.

Example::

    {
      "host": "host1",
      "listen": {"address": "10.210.0.11", "port": 7600,
                 "unix_socket": "/var/lib/segue/lab/segue/host1/agent.sock"},
      "state_dir": "/var/lib/segue/lab/segue/host1",
      "port_groups": {"vm-net": "br-vm-net"},
      "datastores": {"shared": "/var/lib/segue/lab/segue/datastores/shared"},
      "migration_interface": "mig0",
      "accel": "auto",
      "controller_url": "http://10.210.0.2:7700",
      "advertise_url": "http://10.210.0.11:7600",
      "heartbeat_interval": 2.0,
      "cpu_exclude_features": ["avx2", "aes"]
    }

``port_groups`` maps a port group name to the bridge that carries it on this host;
``datastores`` maps a datastore name to the directory where this host mounts it;
``accel`` is ``auto`` (KVM where it can run a stock guest, else TCG), ``kvm`` or ``tcg``.
With ``controller_url`` (``http(s)://...`` or ``unix:PATH``) the agent sends the controller
a heartbeat every ``heartbeat_interval`` seconds, saying it is reachable at
``advertise_url`` (default: ``http://<listen.address>:<listen.port>``).
``cpu_exclude_features`` makes the host offer a smaller CPU feature set, as an older host
would: its facts omit those features, every QEMU it starts gets ``-feat`` for each, and it
refuses VMs whose ``cpu_model`` asks for one explicitly (``segue.agent.admission``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segue.domain.errors import InvalidRequest

# A QEMU CPU feature name; anything else (a comma above all) would change the -cpu option.
_FEATURE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass(frozen=True)
class ListenConfig:
    address: str | None = None
    port: int = 7600
    unix_socket: str | None = None


@dataclass(frozen=True)
class AgentConfig:
    host: str
    state_dir: Path
    listen: ListenConfig = field(default_factory=ListenConfig)
    port_groups: dict[str, str] = field(default_factory=dict)
    datastores: dict[str, Path] = field(default_factory=dict)
    migration_interface: str | None = None
    accel: str = "auto"
    qemu_binary: str = "qemu-system-x86_64"
    controller_url: str | None = None
    advertise_url: str | None = None
    heartbeat_interval: float = 2.0
    cpu_exclude_features: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Raises InvalidRequest (``AGENT_CONFIG_INVALID``) for a bad feature name."""
        for name in self.cpu_exclude_features:
            if not _FEATURE_NAME.fullmatch(name):
                raise InvalidRequest(
                    "AGENT_CONFIG_INVALID",
                    f"cpu_exclude_features: {name!r} is not a CPU feature name",
                    "use QEMU's lowercase feature names, e.g. avx2, aes, sse4.2",
                )

    @property
    def vms_dir(self) -> Path:
        return self.state_dir / "vms"

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "state_dir": str(self.state_dir),
            "listen": {
                "address": self.listen.address,
                "port": self.listen.port,
                "unix_socket": self.listen.unix_socket,
            },
            "port_groups": dict(self.port_groups),
            "datastores": {k: str(v) for k, v in self.datastores.items()},
            "migration_interface": self.migration_interface,
            "accel": self.accel,
            "qemu_binary": self.qemu_binary,
            "controller_url": self.controller_url,
            "advertise_url": self.advertise_url,
            "heartbeat_interval": self.heartbeat_interval,
            "cpu_exclude_features": list(self.cpu_exclude_features),
        }


def config_from_dict(data: dict[str, Any]) -> AgentConfig:
    """Build a config from parsed JSON; raises InvalidRequest naming the bad field."""
    try:
        listen = data.get("listen") or {}
        accel = str(data.get("accel", "auto"))
        if accel not in ("auto", "kvm", "tcg"):
            raise InvalidRequest(
                "AGENT_CONFIG_INVALID",
                f"accel must be auto, kvm or tcg, not {accel!r}",
                "fix 'accel' in the agent configuration",
            )
        listen_config = ListenConfig(
            address=listen.get("address"),
            port=int(listen.get("port", 7600)),
            unix_socket=listen.get("unix_socket"),
        )
        return AgentConfig(
            host=str(data["host"]),
            state_dir=Path(data["state_dir"]),
            listen=listen_config,
            port_groups={str(k): str(v) for k, v in (data.get("port_groups") or {}).items()},
            datastores={str(k): Path(v) for k, v in (data.get("datastores") or {}).items()},
            migration_interface=data.get("migration_interface"),
            accel=accel,
            qemu_binary=str(data.get("qemu_binary", "qemu-system-x86_64")),
            controller_url=data.get("controller_url"),
            advertise_url=_advertise_url(data, listen_config),
            heartbeat_interval=float(data.get("heartbeat_interval", 2.0)),
            cpu_exclude_features=[str(f) for f in data.get("cpu_exclude_features") or []],
        )
    except KeyError as err:
        raise InvalidRequest(
            "AGENT_CONFIG_INVALID",
            f"agent configuration lacks the field {err.args[0]!r}",
            "add it to the configuration file",
        ) from err


def _advertise_url(data: dict[str, Any], listen: ListenConfig) -> str | None:
    """The URL the controller reaches this agent at (needed only with a controller)."""
    if data.get("advertise_url"):
        return str(data["advertise_url"])
    if not data.get("controller_url"):
        return None
    if listen.address is None:
        raise InvalidRequest(
            "AGENT_CONFIG_INVALID",
            "controller_url is set but the agent has no advertise_url nor listen.address",
            "add advertise_url: the URL at which the controller reaches this agent",
        )
    return f"http://{listen.address}:{listen.port}"


def load_config(path: Path) -> AgentConfig:
    """Read an agent configuration file; raises InvalidRequest if missing or malformed."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise InvalidRequest(
            "AGENT_CONFIG_MISSING", f"no agent configuration at {path}", "pass --config FILE"
        ) from err
    except json.JSONDecodeError as err:
        raise InvalidRequest(
            "AGENT_CONFIG_INVALID", f"{path} is not valid JSON: {err}", "fix the file"
        ) from err
    return config_from_dict(data)
