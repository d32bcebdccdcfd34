"""The agent's TOML configuration: round trip, environment overrides, strictness, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from segue.agent.config import (
    AGENT_CONFIG_PATH,
    AgentConfig,
    ListenConfig,
    config_from_dict,
    load_config,
)
from segue.domain.errors import InvalidRequest

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "agent.toml"
BASE = 'host = "h1"\nstate_dir = "/srv/h1"\n'
LISTEN = '[listen]\nunix_socket = "/run/segue/agent.sock"\n'


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SEGUE_AGENT_* variable of the caller's shell reaches these tests."""
    for name in [n for n in os.environ if n.upper().startswith("SEGUE_AGENT_")]:
        monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    """An agent.toml of ``text``, listening on a unix socket unless ``text`` says where."""
    path = tmp_path / "agent.toml"
    path.write_text(text if "listen" in text else text + LISTEN)
    return path


def refused(path: Path) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        load_config(path)
    return err.value


def full_config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        host="host2", state_dir=tmp_path / "state",
        listen=ListenConfig(address="10.0.0.12", port=7601, unix_socket=str(tmp_path / "s")),
        port_groups={"vm-net": "br-vm-net", "backup": "br-b"},
        datastores={"shared": tmp_path / "ds"}, migration_interface="mig0", accel="tcg",
        qemu_binary="/usr/bin/qemu", controller_url="http://10.0.0.2:7700",
        heartbeat_interval=0.5, cpu_exclude_features=["avx2", "sse4.2"])


def test_toml_round_trip(tmp_path: Path) -> None:
    config = full_config(tmp_path)
    assert config.advertise_url == "http://10.0.0.12:7601"  # derived
    again = load_config(write(tmp_path, config.to_toml()))
    assert again == config
    assert again.datastores == {"shared": tmp_path / "ds"}
    assert isinstance(again.state_dir, Path) and again.vms_dir == tmp_path / "state" / "vms"


def test_round_trip_of_defaults_leaves_out_unset_keys(tmp_path: Path) -> None:
    config = AgentConfig(host="h1", state_dir=Path("/srv/h1"),
                         listen=ListenConfig(unix_socket="/run/a.sock"))
    text = config.to_toml()
    assert "controller_url" not in text and "advertise_url" not in text  # TOML has no null
    assert load_config(write(tmp_path, text)) == config
    assert config.to_dict()["listen"] == {"address": None, "port": 7600,
                                          "unix_socket": "/run/a.sock"}
    assert config_from_dict(config.to_dict()) == config


def test_a_file_must_give_somewhere_to_listen(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(BASE)
    err = refused(path)
    assert err.code == "AGENT_CONFIG_INVALID" and str(path) in err.message
    assert err.details["field"] == "listen"
    assert AgentConfig(host="h1", state_dir=Path("/x")).listen == ListenConfig()  # in code: fine


def test_the_example_file_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.host == "host1" and config.listen.port == 7600
    assert config.port_groups == {"vm-net": "br-vm-net"}
    assert config.datastores == {"shared": Path("/srv/segue/datastores/shared")}
    assert config.image_dirs == [Path("/var/lib/segue/images")]
    assert config.advertise_url == "https://10.210.0.11:7600"


def test_image_dirs_default_to_the_image_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGUE_HOME", "/srv/sh")
    assert config_from_dict({"host": "h1", "state_dir": "/x"}).image_dirs == [
        Path("/srv/sh/images")]  # where `segue image build` puts the guest image
    config = config_from_dict({"host": "h1", "state_dir": "/x", "image_dirs": ["/a", "/b"]})
    assert config.image_dirs == [Path("/a"), Path("/b")]
    assert config_from_dict({"host": "h1", "state_dir": "/x", "image_dirs": []}).image_dirs == []


def test_image_dirs_must_be_absolute() -> None:
    with pytest.raises(InvalidRequest) as err:
        config_from_dict({"host": "h1", "state_dir": "/x", "image_dirs": ["images"]})
    assert err.value.code == "AGENT_CONFIG_INVALID"
    assert err.value.details["field"] == "image_dirs" and "'images'" in err.value.message


def test_the_default_path() -> None:
    assert str(AGENT_CONFIG_PATH) == "/etc/segue/agent.toml"


def test_load_config_reads_the_default_path(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("segue.agent.config.AGENT_CONFIG_PATH", write(tmp_path, BASE))
    assert load_config().host == "h1"


def test_a_missing_file(tmp_path: Path) -> None:
    err = refused(tmp_path / "nowhere.toml")
    assert err.code == "AGENT_CONFIG_MISSING"
    assert str(tmp_path / "nowhere.toml") in err.message and "--config" in err.hint


def test_a_file_that_is_not_toml(tmp_path: Path) -> None:
    err = refused(write(tmp_path, '{"host": "h1"}'))
    assert err.code == "AGENT_CONFIG_INVALID" and "TOML" in err.message


def test_environment_overrides_single_keys(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, BASE + '[listen]\naddress = "10.0.0.1"\n')
    monkeypatch.setenv("SEGUE_AGENT_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SEGUE_AGENT_LISTEN__PORT", "7601")
    monkeypatch.setenv("SEGUE_AGENT_DATASTORES", '{"shared": "/srv/shared"}')
    monkeypatch.setenv("SEGUE_AGENT_CPU_EXCLUDE_FEATURES", '["avx2"]')
    monkeypatch.setenv("segue_agent_accel", "tcg")  # names are case-insensitive
    config = load_config(path)
    assert config.heartbeat_interval == 1.0
    assert config.listen == ListenConfig(address="10.0.0.1", port=7601)  # the file's address stays
    assert config.datastores == {"shared": Path("/srv/shared")}
    assert config.cpu_exclude_features == ["avx2"] and config.accel == "tcg"
    assert config.host == "h1"


def test_environment_does_not_reach_configs_built_in_code(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGUE_AGENT_ACCEL", "kvm")
    assert AgentConfig(host="h1", state_dir=Path("/x")).accel == "auto"
    assert config_from_dict({"host": "h1", "state_dir": "/x"}).accel == "auto"


@pytest.mark.parametrize(("name", "value", "named"), [
    ("SEGUE_AGENT_HEARTBEAT_INTERVAL", "often", "SEGUE_AGENT_HEARTBEAT_INTERVAL"),
    ("SEGUE_AGENT_HEARTBEAT_INTERVAL", "nan", "SEGUE_AGENT_HEARTBEAT_INTERVAL"),
    ("SEGUE_AGENT_HEARTBEAT_INTERVAL", "0", "SEGUE_AGENT_HEARTBEAT_INTERVAL"),
    ("SEGUE_AGENT_ACCEL", "fast", "SEGUE_AGENT_ACCEL"),
    ("SEGUE_AGENT_LISTEN__PORT", "70000", "SEGUE_AGENT_LISTEN"),
    ("SEGUE_AGENT_LISTEN__PROT", "7601", "SEGUE_AGENT_LISTEN"),
    ("SEGUE_AGENT_HEARTBEAT_INTERVL", "1", "SEGUE_AGENT_HEARTBEAT_INTERVL"),
    ("SEGUE_AGENT_DATASTORES", "{bad", "SEGUE_AGENT_DATASTORES"),
    ("SEGUE_AGENT_CPU_EXCLUDE_FEATURES", "avx2", "SEGUE_AGENT_CPU_EXCLUDE_FEATURES"),
    ("SEGUE_AGENT_CPU_EXCLUDE_FEATURES", '["AES"]', "SEGUE_AGENT_CPU_EXCLUDE_FEATURES"),
])
def test_bad_environment_values_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            name: str, value: str, named: str) -> None:
    monkeypatch.setenv(name, value)
    err = refused(write(tmp_path, BASE))
    assert err.code == "AGENT_CONFIG_INVALID"
    assert named in err.message


@pytest.mark.parametrize(("text", "key"), [
    ('colour = "blue"\n', "colour"),  # unknown key
    ('[listen]\nprot = 7600\n', "listen.prot"),  # unknown nested key
    ('[listen]\nport = "7600"\n', "listen.port"),  # "512" for a number
    ('heartbeat_interval = "2"\n', "heartbeat_interval"),
    ("heartbeat_interval = true\n", "heartbeat_interval"),
    ("heartbeat_interval = nan\n", "heartbeat_interval"),
    ("heartbeat_interval = inf\n", "heartbeat_interval"),
    ("heartbeat_interval = 0\n", "heartbeat_interval"),
    ("heartbeat_interval = -1.5\n", "heartbeat_interval"),
    ("accel = 1\n", "accel"),
    ('accel = "fast"\n', "accel"),
    ('cpu_exclude_features = "avx2"\n', "cpu_exclude_features"),
    ('cpu_exclude_features = ["AES"]\n', "cpu_exclude_features.0"),
    ('cpu_exclude_features = ["avx2,+aes"]\n', "cpu_exclude_features.0"),
    ("[listen]\nport = 0\n", "listen.port"),
    ("[listen]\nport = 70000\n", "listen.port"),
    ("[datastores]\nshared = 1\n", "datastores.shared"),
    ("[port_groups]\nvm-net = true\n", "port_groups.vm-net"),
    ("qemu_binary = 2024-01-01\n", "qemu_binary"),
])
def test_bad_keys_are_refused_naming_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, BASE + text)
    err = refused(path)
    assert err.code == "AGENT_CONFIG_INVALID"
    assert key in err.message and str(path) in err.message
    assert err.details["field"] == key
    assert err.hint


def test_a_missing_required_key(tmp_path: Path) -> None:
    err = refused(write(tmp_path, 'state_dir = "/x"\n'))
    assert err.code == "AGENT_CONFIG_INVALID" and "host is required" in err.message


def test_advertise_url_needs_an_address_with_a_controller(tmp_path: Path) -> None:
    err = refused(write(tmp_path, BASE + 'controller_url = "unix:/c.sock"\n'))
    assert err.code == "AGENT_CONFIG_INVALID" and "advertise_url" in err.message
    given = load_config(write(tmp_path, BASE + 'controller_url = "unix:/c.sock"\n'
                                              'advertise_url = "http://h1:7600"\n'))
    assert given.advertise_url == "http://h1:7600"


def test_config_from_dict_is_strict_too() -> None:
    base = {"host": "h1", "state_dir": "/x"}
    for bad in ({"heartbeat_interval": "2"}, {"listen": {"port": "7600"}}, {"colour": 1},
                {"heartbeat_interval": float("nan")}):
        with pytest.raises(InvalidRequest) as err:
            config_from_dict({**base, **bad})
        assert err.value.code == "AGENT_CONFIG_INVALID"
        assert "agent configuration" in err.value.message
