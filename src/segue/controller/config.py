"""Configuration of the controller, read from a JSON file.

Example::

    {
      "database_url": "sqlite:////var/lib/segue/lab/segue/controller.db",
      "listen": {"address": "10.210.0.2", "port": 7700,
                 "unix_socket": "/var/lib/segue/lab/segue/controller.sock"},
      "heartbeat_timeout": 10.0,
      "max_outgoing_per_host": 2,
      "max_incoming_per_host": 2
    }

``database_url`` is any SQLAlchemy URL: a SQLite file by default, PostgreSQL
(``postgresql+psycopg://...``) for several controllers sharing one database.
``max_outgoing_per_host`` / ``max_incoming_per_host``: migrations that may run at once out of
and into each host (default 2 each); further requests are queued in order
(``segue.controller.scheduler``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segue.agent.config import ListenConfig
from segue.controller.scheduler import HostLimits
from segue.domain.errors import InvalidRequest

CONTROLLER_PORT = 7700


@dataclass(frozen=True)
class ControllerConfig:
    database_url: str
    listen: ListenConfig = field(default_factory=lambda: ListenConfig(port=CONTROLLER_PORT))
    heartbeat_timeout: float = 10.0
    max_outgoing_per_host: int = 2
    max_incoming_per_host: int = 2

    @property
    def limits(self) -> HostLimits:
        """The per-host migration limits the scheduler applies."""
        return HostLimits(self.max_outgoing_per_host, self.max_incoming_per_host)

    def to_dict(self) -> dict[str, Any]:
        return {
            "database_url": self.database_url,
            "listen": {"address": self.listen.address, "port": self.listen.port,
                       "unix_socket": self.listen.unix_socket},
            "heartbeat_timeout": self.heartbeat_timeout,
            "max_outgoing_per_host": self.max_outgoing_per_host,
            "max_incoming_per_host": self.max_incoming_per_host,
        }


def controller_config_from_dict(data: dict[str, Any]) -> ControllerConfig:
    """Build a config from parsed JSON; raises InvalidRequest naming the bad field
    (``CONTROLLER_CONFIG_INVALID``; ``MIGRATION_LIMIT_INVALID`` for a limit below 1)."""
    if "database_url" not in data:
        raise InvalidRequest("CONTROLLER_CONFIG_INVALID",
                             "controller configuration lacks 'database_url'",
                             "add e.g. sqlite:////var/lib/segue/controller.db")
    listen = data.get("listen") or {}
    config = ControllerConfig(
        database_url=str(data["database_url"]),
        listen=ListenConfig(address=listen.get("address"),
                            port=int(listen.get("port", CONTROLLER_PORT)),
                            unix_socket=listen.get("unix_socket")),
        heartbeat_timeout=float(data.get("heartbeat_timeout", 10.0)),
        max_outgoing_per_host=int(data.get("max_outgoing_per_host", 2)),
        max_incoming_per_host=int(data.get("max_incoming_per_host", 2)),
    )
    config.limits.validate()
    return config


def load_controller_config(path: Path) -> ControllerConfig:
    """Read a controller configuration file; raises InvalidRequest if missing or malformed."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise InvalidRequest("CONTROLLER_CONFIG_MISSING", f"no controller configuration at {path}",
                             "pass --config FILE") from err
    except json.JSONDecodeError as err:
        raise InvalidRequest("CONTROLLER_CONFIG_INVALID", f"{path} is not valid JSON: {err}",
                             "fix the file") from err
    return controller_config_from_dict(data)
