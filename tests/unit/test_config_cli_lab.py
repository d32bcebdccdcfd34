"""`segue agent` and `segue server` load their TOML files (default paths, --config, errors as
codes), and the lab writes configuration files the services read back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segue.agent.config import AgentConfig, config_from_dict, load_config
from segue.cli.main import app as cli
from segue.controller.config import (
    ControllerConfig,
    controller_config_from_dict,
    load_controller_config,
)
from segue.lab.lab import _write_controller_config, _write_host_files
from segue.lab.topology import plan_lab

AGENT = 'host = "h1"\nstate_dir = "/srv/h1"\n[listen]\nunix_socket = "/run/a.sock"\n'
CONTROLLER = 'database_url = "sqlite:////tmp/c.db"\nlisten = { address = "127.0.0.1" }\n'


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.upper().startswith(("SEGUE_AGENT_",
                                                                "SEGUE_CONTROLLER_"))]:
        monkeypatch.delenv(name)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The configs `segue agent`/`segue server` would run with (the services do not start)."""
    runs: list[object] = []
    monkeypatch.setattr("segue.agent.server.run_agent", runs.append)
    monkeypatch.setattr("segue.controller.server.run_controller", runs.append)
    return runs


def segue(*args: str, code: int = 0) -> str:
    out = CliRunner().invoke(cli, list(args))
    assert out.exit_code == code, out.output
    return out.output


def test_agent_runs_with_the_file_given(tmp_path: Path, started: list[object]) -> None:
    path = tmp_path / "a.toml"
    path.write_text(AGENT)
    segue("agent", "--config", str(path))
    assert started == [load_config(path)]
    assert isinstance(started[0], AgentConfig) and started[0].host == "h1"


def test_agent_reads_the_default_file(tmp_path: Path, started: list[object],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(AGENT)
    monkeypatch.setattr("segue.agent.config.AGENT_CONFIG_PATH", path)
    monkeypatch.setenv("SEGUE_AGENT_HEARTBEAT_INTERVAL", "1")
    segue("agent")
    assert isinstance(started[0], AgentConfig) and started[0].heartbeat_interval == 1.0


def test_server_runs_with_the_file_given(tmp_path: Path, started: list[object],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONTROLLER)
    segue("server", "--config", str(path))
    monkeypatch.setattr("segue.controller.config.CONTROLLER_CONFIG_PATH", path)
    segue("server")
    assert started == [load_controller_config(path)] * 2
    assert isinstance(started[0], ControllerConfig)


@pytest.mark.parametrize(("command", "text", "code"), [
    ("agent", None, "AGENT_CONFIG_MISSING"),
    ("agent", AGENT + "colour = 1\n", "AGENT_CONFIG_INVALID"),
    ("agent", 'host = "h1"\nstate_dir = "/x"\n', "AGENT_CONFIG_INVALID"),  # nowhere to listen
    ("server", 'database_url = "sqlite:////tmp/c.db"\n', "CONTROLLER_CONFIG_INVALID"),
    ("server", None, "CONTROLLER_CONFIG_MISSING"),
    ("server", CONTROLLER + "max_incoming_per_host = 0\n", "MIGRATION_LIMIT_INVALID"),
    ("server", CONTROLLER + 'heartbeat_timeout = "10"\n', "CONTROLLER_CONFIG_INVALID"),
])
def test_a_bad_configuration_prints_its_code_and_exits_1(
        tmp_path: Path, command: str, text: str | None, code: str) -> None:
    path = tmp_path / f"{command}.toml"
    if text is not None:
        path.write_text(text)
    out = segue(command, "--config", str(path), code=1)
    assert code in out and str(path.name) in " ".join(out.split())


def test_the_lab_writes_toml_the_services_read(tmp_path: Path) -> None:
    overrides = {"host2": {"cpu_exclude_features": ["avx2", "aes"], "port_groups": {}}}
    plan = plan_lab("cfg", 2, root=tmp_path, host_overrides=overrides,
                    controller_settings={"max_outgoing_per_host": 1})
    _write_host_files(plan)
    _write_controller_config(plan)
    for host in plan.hosts:
        assert host.agent_config_path.suffix == ".toml"
        assert load_config(host.agent_config_path) == config_from_dict(host.agent_config())
    older = load_config(plan.host("host2").agent_config_path)
    assert older.cpu_exclude_features == ["avx2", "aes"] and older.port_groups == {}
    assert older.advertise_url == "https://10.210.0.12:7600"
    controller = load_controller_config(plan.controller.config_path)
    assert controller == controller_config_from_dict(plan.controller.config())
    assert controller.max_outgoing_per_host == 1 and controller.listen.port == 7700
    # the lab's services speak mutual TLS: nothing is let in without credentials
    assert not controller.insecure_host_heartbeats and not controller.insecure_plain_http
    assert controller.pki_dir == plan.controller.pki_dir
    assert older.pki_dir == plan.host("host2").pki_dir and not older.insecure_plain_http
