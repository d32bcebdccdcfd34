"""The lab for real: namespaces, fabric, reachability, and lab up/down with a stand-in agent.

Needs root (network namespaces). Everything lives in ``segt-*`` namespaces and a temporary
SEGUE_HOME; every test removes what it made, even when it fails.
"""

from __future__ import annotations

import json
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import NetNS

from segue.domain.errors import Conflict, Unavailable
from segue.lab import netns
from segue.lab.lab import lab_down, lab_status, lab_up, load_state, start_agent, stop_agent
from segue.lab.topology import plan_lab
from segue.procs import pid_alive

pytestmark = pytest.mark.integration

LAB = "segt"

# A stand-in for `segue agent`: answers /health on the unix socket and on mgmt_ip:port.
STAND_IN = textwrap.dedent(
    """
    import json, os, socket, socketserver, sys, threading, tomllib
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    cfg = tomllib.load(open(sys.argv[1], "rb"))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"host": cfg["host"], "pid": os.getpid()}).encode()
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self):
            return "peer"

    class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    listen = cfg["listen"]
    tcp = ThreadingHTTPServer((listen["address"], listen["port"]), Handler)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    UnixHTTPServer(listen["unix_socket"], Handler).serve_forever()
    """
)

REACH = textwrap.dedent(
    """
    import socket, sys
    try:
        socket.create_connection((sys.argv[1], 9), timeout=3)
    except ConnectionRefusedError:
        sys.exit(0)  # a RST came back: the address answered
    except OSError as err:
        sys.exit(f"unreachable: {err}")
    """
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("SEGUE_HOME", str(tmp_path / "home"))
    try:
        yield tmp_path
    finally:
        lab_down(LAB)
        assert netns.list_namespaces(f"{LAB}-") == []


@pytest.fixture
def stand_in(tmp_path: Path) -> list[str]:
    script = tmp_path / "stand_in_agent.py"
    script.write_text(STAND_IN)
    return [sys.executable, str(script)]


def _reachable(ns: str, ip: str) -> bool:
    return netns.run_in_netns(ns, [sys.executable, "-c", REACH, ip], timeout=20).returncode == 0


def test_fabric_connects_hosts_and_client(home: Path) -> None:
    plan = plan_lab(LAB, 2)
    try:
        netns.create_fabric(plan)
        netns.create_fabric(plan)  # idempotent
        assert netns.list_namespaces(f"{LAB}-") == sorted(plan.namespaces)
        assert _reachable(f"{LAB}-host1", "10.210.0.12")
        assert _reachable(f"{LAB}-host1", "10.210.1.12")
        assert _reachable(f"{LAB}-host2", "10.210.0.11")
        with NetNS(f"{LAB}-host1", flags=0) as ipr:  # a stand-in guest address on the bridge
            bridge = ipr.link_lookup(ifname="br-vm-net")[0]
            ipr.addr("add", index=bridge, address="10.210.2.50", prefixlen=24)
        assert _reachable(f"{LAB}-client", "10.210.2.50")
        assert not _reachable(f"{LAB}-client", "10.210.0.11")  # vm-net is not mgmt
    finally:
        removed, _ = netns.destroy_fabric(plan)
    assert sorted(removed) == sorted(plan.namespaces)
    assert netns.list_namespaces(f"{LAB}-") == []


def test_destroy_half_made_fabric(home: Path) -> None:
    plan = plan_lab(LAB, 2)
    netns.ensure_namespace(plan.switch_ns)
    netns.ensure_namespace(plan.hosts[0].netns)
    removed, pids = netns.destroy_fabric(plan)
    assert sorted(removed) == sorted([plan.switch_ns, plan.hosts[0].netns])
    assert pids == []
    assert netns.destroy_fabric(plan) == ([], [])


def test_lab_up_down(home: Path, stand_in: list[str]) -> None:
    state = lab_up(LAB, 2, agent_argv=lambda cfg: [*stand_in, str(cfg)],
                   controller_argv=None, health_timeout=30)
    plan = state.plan
    identity = json.loads(plan.datastore_identity.read_text())
    assert identity["name"] == "shared" and identity["uuid"]
    config = tomllib.loads(plan.host("host1").agent_config_path.read_text())
    assert config["listen"]["address"] == "10.210.0.11"
    for host in plan.hosts:
        assert state.agents[host.name] in netns.pids_in_netns(host.netns)
    status = lab_status(LAB)
    assert status.up and all(h.agent_healthy for h in status.hosts)
    assert _reachable(f"{LAB}-host1", "10.210.0.12")

    with pytest.raises(Conflict) as err:
        lab_up(LAB, 2, agent_argv=lambda cfg: [*stand_in, str(cfg)],
                   controller_argv=None)
    assert err.value.code == "LAB_EXISTS"

    report = lab_down(LAB)
    assert report.existed and sorted(report.namespaces) == sorted(plan.namespaces)
    assert set(state.agents.values()) <= set(report.pids)
    assert not plan.lab_dir.exists()
    assert netns.list_namespaces(f"{LAB}-") == []
    assert not any(pid_alive(pid) for pid in report.pids)
    assert not lab_down(LAB).existed


def test_restart_agent_keeps_other_processes(home: Path, stand_in: list[str]) -> None:
    lab_up(LAB, 1, agent_argv=lambda cfg: [*stand_in, str(cfg)],
                   controller_argv=None)
    host = plan_lab(LAB, 1).host("host1")
    guest = netns.spawn_in_netns(host.netns, ["sleep", "300"], host.state_dir / "guest.log")
    old = stop_agent(LAB, "host1")
    assert old is not None and not pid_alive(old)
    assert pid_alive(guest.pid)
    assert not lab_status(LAB).up
    new = start_agent(LAB, "host1")
    assert new != old and load_state(LAB).agents["host1"] == new
    assert lab_status(LAB).up
    assert guest.pid in lab_down(LAB).pids


def test_crashed_lab_is_cleaned_by_lab_up(home: Path, stand_in: list[str]) -> None:
    state = lab_up(LAB, 1, agent_argv=lambda cfg: [*stand_in, str(cfg)],
                   controller_argv=None)
    netns.kill_pids([pid for pid in state.agents.values() if pid is not None])
    netns.ensure_namespace(f"{LAB}-stale")
    again = lab_up(LAB, 1, agent_argv=lambda cfg: [*stand_in, str(cfg)],
                   controller_argv=None)
    assert f"{LAB}-stale" not in netns.list_namespaces(f"{LAB}-")
    assert lab_status(LAB).up and again.created >= state.created


def test_failing_agent_undoes_lab_up(home: Path) -> None:
    with pytest.raises(Unavailable) as err:
        lab_up(LAB, 1, agent_argv=lambda cfg: [sys.executable, "-c", "print('boom'); exit(3)"],
               controller_argv=None)
    assert err.value.code == "LAB_UP_FAILED"
    assert "boom" in err.value.details["log_tail"]["host1"]
    assert netns.list_namespaces(f"{LAB}-") == []
    assert not plan_lab(LAB, 1).lab_dir.exists()
