"""Pure parts of the inventory CLI and of the agent's heartbeat."""

from __future__ import annotations

import logging
import random

import pytest

from segue.agent.config import config_from_dict
from segue.agent.heartbeat import FailureLog
from segue.api.vm import DiskBody, NicBody
from segue.cli.vms import parse_disk, parse_nic, random_mac
from segue.domain.errors import InvalidRequest
from segue.domain.vm import MAC_RE


def test_random_mac_is_qemu_local_unicast() -> None:
    rng = random.Random(1)
    macs = {random_mac(rng) for _ in range(50)}
    assert len(macs) == 50
    for mac in macs:
        assert MAC_RE.fullmatch(mac) and mac.startswith("52:54:00:")


def test_parse_disk() -> None:
    assert parse_disk("shared:web1/d.qcow2") == DiskBody(datastore="shared",
                                                         path="web1/d.qcow2", format="qcow2")
    assert parse_disk("shared:web1/d.img:raw").format == "raw"
    for bad in ("shared", ":x", "shared:", "shared:a:vmdk", "a:b:c:d"):
        with pytest.raises(InvalidRequest) as caught:
            parse_disk(bad)
        assert caught.value.code == "CLI_DISK_INVALID"


def test_parse_nic() -> None:
    assert parse_nic("vm-net=52:54:00:AA:BB:CC") == NicBody(port_group="vm-net",
                                                            mac="52:54:00:aa:bb:cc")
    assert parse_nic("vm-net", random.Random(0)).mac.startswith("52:54:00:")
    with pytest.raises(InvalidRequest):
        parse_nic("=52:54:00:aa:bb:cc")


def test_failure_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    failures = FailureLog(interval=60)
    with caplog.at_level(logging.INFO, logger="segue.agent.heartbeat"):
        for t in (0, 1, 59, 61):
            failures.failed(OSError("refused"), float(t))
        failures.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "(1 in a row)" in lines[0] and "(4 in a row)" in lines[1]
    assert "again after 4 failures" in lines[2]


def test_agent_advertise_url() -> None:
    base = {"host": "h1", "state_dir": "/tmp/x"}
    assert config_from_dict(base).advertise_url is None
    config = config_from_dict({**base, "controller_url": "http://c:7700",
                               "listen": {"address": "10.0.0.1", "port": 7600}})
    assert config.advertise_url == "http://10.0.0.1:7600" and config.heartbeat_interval == 2.0
    with pytest.raises(InvalidRequest):
        config_from_dict({**base, "controller_url": "unix:/c.sock"})


def test_agent_cpu_exclude_features() -> None:
    base = {"host": "h1", "state_dir": "/tmp/x"}
    assert config_from_dict(base).cpu_exclude_features == []
    config = config_from_dict({**base, "cpu_exclude_features": ["avx2", "sse4.2"]})
    assert config.cpu_exclude_features == ["avx2", "sse4.2"]
    assert config_from_dict(config.to_dict()) == config
    for bad in ("avx2,+aes", "", "-aes", "AES"):
        with pytest.raises(InvalidRequest) as err:
            config_from_dict({**base, "cpu_exclude_features": [bad]})
        assert err.value.code == "AGENT_CONFIG_INVALID"
