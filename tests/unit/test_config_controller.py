"""The controller's TOML configuration: round trip, environment overrides, strictness, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from segue.controller.config import (
    CONTROLLER_CONFIG_PATH,
    ControllerConfig,
    ControllerListen,
    controller_config_from_dict,
    load_controller_config,
)
from segue.controller.scheduler import HostLimits
from segue.domain.errors import InvalidRequest

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "controller.toml"
BASE = 'database_url = "sqlite:////tmp/c.db"\n'
LISTEN = '[listen]\nunix_socket = "/run/segue/controller.sock"\n'


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SEGUE_CONTROLLER_* variable of the caller's shell reaches these tests."""
    for name in [n for n in os.environ if n.upper().startswith("SEGUE_CONTROLLER_")]:
        monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    """A controller.toml of ``text``, listening on a unix socket unless ``text`` says where."""
    path = tmp_path / "controller.toml"
    path.write_text(text if "listen" in text else text + LISTEN)
    return path


def refused(path: Path) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        load_controller_config(path)
    return err.value


def test_toml_round_trip(tmp_path: Path) -> None:
    config = ControllerConfig(
        database_url="postgresql+psycopg://segue@db/segue",
        listen=ControllerListen(address="10.0.0.2", unix_socket=str(tmp_path / "c.sock")),
        heartbeat_timeout=30, max_outgoing_per_host=1, max_incoming_per_host=4,
        max_auto_downtime_ms=150)
    again = load_controller_config(write(tmp_path, config.to_toml()))
    assert again == config and again.limits == HostLimits(1, 4)
    assert again.max_auto_downtime_ms == 150
    assert again.heartbeat_timeout == 30.0
    assert controller_config_from_dict(config.to_dict()) == config


def test_defaults(tmp_path: Path) -> None:
    config = load_controller_config(write(tmp_path, BASE + '[listen]\naddress = "10.0.0.2"\n'))
    assert config.listen.port == 7700  # the controller's port, not the agent's
    assert config.heartbeat_timeout == 10.0 and config.limits == HostLimits(2, 2)
    assert config.max_auto_downtime_ms == 300  # the downtime bound users would not notice


def test_the_example_file_loads() -> None:
    config = load_controller_config(EXAMPLE)
    assert config.database_url == "sqlite:////var/lib/segue/controller.db"
    assert config.listen.address == "10.210.0.2" and config.limits == HostLimits(2, 2)
    assert config.max_auto_downtime_ms == 300
    assert config.pki_dir == Path("/var/lib/segue/pki")
    assert not config.insecure_host_heartbeats
    assert (config.audit.max_age_days, config.audit.max_entries) == (365, 1_000_000)


def test_the_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert str(CONTROLLER_CONFIG_PATH) == "/etc/segue/controller.toml"
    monkeypatch.setattr("segue.controller.config.CONTROLLER_CONFIG_PATH", write(tmp_path, BASE))
    assert load_controller_config().database_url == "sqlite:////tmp/c.db"


def test_a_missing_file(tmp_path: Path) -> None:
    err = refused(tmp_path / "nowhere.toml")
    assert err.code == "CONTROLLER_CONFIG_MISSING"
    assert "nowhere.toml" in err.message and "--config" in err.hint


def test_environment_overrides_single_keys(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGUE_CONTROLLER_DATABASE_URL", "postgresql+psycopg://segue@db/segue")
    monkeypatch.setenv("SEGUE_CONTROLLER_MAX_INCOMING_PER_HOST", "3")
    monkeypatch.setenv("SEGUE_CONTROLLER_LISTEN__ADDRESS", "10.0.0.3")
    config = load_controller_config(write(tmp_path, BASE + "heartbeat_timeout = 5.0\n"))
    assert config.database_url == "postgresql+psycopg://segue@db/segue"
    assert config.limits == HostLimits(2, 3) and config.heartbeat_timeout == 5.0
    assert config.listen == ControllerListen(address="10.0.0.3", port=7700,
                                             unix_socket="/run/segue/controller.sock")


def test_the_environment_can_give_a_required_key(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGUE_CONTROLLER_DATABASE_URL", "sqlite:////tmp/env.db")
    assert load_controller_config(write(tmp_path, "")).database_url == "sqlite:////tmp/env.db"


@pytest.mark.parametrize(("text", "key", "code"), [
    ("max_incoming_per_host = 0\n", "max_incoming_per_host", "MIGRATION_LIMIT_INVALID"),
    ("max_outgoing_per_host = -1\n", "max_outgoing_per_host", "MIGRATION_LIMIT_INVALID"),
    ('max_outgoing_per_host = "512"\n', "max_outgoing_per_host", "MIGRATION_LIMIT_INVALID"),
    ("max_outgoing_per_host = 1.5\n", "max_outgoing_per_host", "MIGRATION_LIMIT_INVALID"),
    ("max_auto_downtime_ms = 0\n", "max_auto_downtime_ms", "CONTROLLER_CONFIG_INVALID"),
    ("max_auto_downtime_ms = 60001\n", "max_auto_downtime_ms", "CONTROLLER_CONFIG_INVALID"),
    ('max_auto_downtime_ms = "300"\n', "max_auto_downtime_ms", "CONTROLLER_CONFIG_INVALID"),
    ('heartbeat_timeout = "10"\n', "heartbeat_timeout", "CONTROLLER_CONFIG_INVALID"),
    ("heartbeat_timeout = nan\n", "heartbeat_timeout", "CONTROLLER_CONFIG_INVALID"),
    ("heartbeat_timeout = -inf\n", "heartbeat_timeout", "CONTROLLER_CONFIG_INVALID"),
    ("heartbeat_timeout = 0\n", "heartbeat_timeout", "CONTROLLER_CONFIG_INVALID"),
    ("database = 1\n", "database", "CONTROLLER_CONFIG_INVALID"),
    ("[listen]\nport = 77000\n", "listen.port", "CONTROLLER_CONFIG_INVALID"),
    ("[listen]\nsocket = \"/x\"\n", "listen.socket", "CONTROLLER_CONFIG_INVALID"),
    ("[audit]\nmax_age_days = 0\n", "audit.max_age_days", "CONTROLLER_CONFIG_INVALID"),
    ("[audit]\nmax_entries = 10\n", "audit.max_entries", "CONTROLLER_CONFIG_INVALID"),
    ("[audit]\nkeep = 1\n", "audit.keep", "CONTROLLER_CONFIG_INVALID"),
    ('insecure_host_heartbeats = "yes"\n', "insecure_host_heartbeats",
     "CONTROLLER_CONFIG_INVALID"),
])
def test_bad_keys_are_refused_naming_key_and_file(tmp_path: Path, text: str, key: str,
                                                  code: str) -> None:
    path = write(tmp_path, BASE + text)
    err = refused(path)
    assert err.code == code
    assert key in err.message and str(path) in err.message
    assert err.details["field"] == key


def test_database_url_is_required(tmp_path: Path) -> None:
    err = refused(write(tmp_path, "heartbeat_timeout = 5.0\n"))
    assert err.code == "CONTROLLER_CONFIG_INVALID" and "database_url is required" in err.message
    with pytest.raises(InvalidRequest) as empty:
        controller_config_from_dict({"database_url": ""})
    assert empty.value.code == "CONTROLLER_CONFIG_INVALID"


def test_a_bad_environment_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGUE_CONTROLLER_MAX_OUTGOING_PER_HOST", "0")
    err = refused(write(tmp_path, BASE))
    assert err.code == "MIGRATION_LIMIT_INVALID"
    assert "SEGUE_CONTROLLER_MAX_OUTGOING_PER_HOST" in err.message
