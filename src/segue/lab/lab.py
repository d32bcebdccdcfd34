"""Lab orchestration: bring a namespaced cluster up and down, start and stop its agents.

``lab_up`` cleans whatever a crashed lab of that name left (namespaces, processes in them
including QEMU guests, the lab directory), builds the fabric, the shared datastore with its
identity file, one agent configuration per host (``<labdir>/<host>/agent.toml``) and the
controller's (``<labdir>/controller.toml``), starts each agent inside its host's namespace
and waits until it answers ``GET /health`` on its unix socket. The state file
``<labdir>/lab.json`` records the plan inputs (with the per-host agent overrides), each agent's
pid and argv, and the creation time.

Errors: ``Conflict`` (``LAB_EXISTS``) when the lab is already up; ``Unavailable``
(``LAB_UP_FAILED``, ``AGENT_START_FAILED``) when building the lab or starting an agent fails
(everything ``lab_up`` made is removed again; the agent's log tail is in ``details``);
``NotFound`` (``LAB_NOT_FOUND``, ``LAB_HOST_NOT_FOUND``) for an unknown lab or host;
``InvalidRequest`` (``LAB_INVALID``) for bad names or sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segue.clients.base import Blocking, ServiceClient
from segue.clients.controller import ControllerClient
from segue.domain.errors import Conflict, NotFound, SegueError, Unavailable
from segue.files import log_tail, write_json_atomic
from segue.lab import credentials, netns
from segue.lab.topology import (
    DATASTORE_NAME,
    HostPlan,
    LabPlan,
    plan_lab,
    plan_to_dict,
    validate_lab_name,
)
from segue.paths import lab_dir
from segue.procs import pid_alive

AgentArgv = Callable[[Path], list[str]]
HEALTH_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 30


def default_controller_argv(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "segue", "server", "--config", str(config_path)]


def default_agent_argv(config_path: Path) -> list[str]:
    """The real agent: ``python -m segue agent --config <config_path>``."""
    return [sys.executable, "-m", "segue", "agent", "--config", str(config_path)]


@dataclass
class LabState:
    """A running lab: its plan, each host's agent pid and argv, and when it was made."""

    plan: LabPlan
    agents: dict[str, int | None]
    agent_argv: dict[str, list[str]]
    created: float
    controller_pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.plan.name,
            "hosts": len(self.plan.hosts),
            "port_groups": list(self.plan.port_groups),
            "host_overrides": self.plan.host_overrides,
            "controller_settings": self.plan.controller.settings,
            "created": self.created,
            "agents": dict(self.agents),
            "agent_argv": dict(self.agent_argv),
            "controller_pid": self.controller_pid,
            "plan": plan_to_dict(self.plan),
        }


@dataclass(frozen=True)
class DownReport:
    """What ``lab_down`` removed; ``existed`` is False when there was nothing to remove."""

    name: str
    existed: bool
    namespaces: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    lab_dir_removed: bool = False

    @property
    def message(self) -> str:
        if not self.existed:
            return f"no lab {self.name!r}: nothing to remove"
        return (
            f"lab {self.name!r} removed: {len(self.namespaces)} namespaces, "
            f"{len(self.pids)} processes" + (", lab directory" if self.lab_dir_removed else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "existed": self.existed,
            "namespaces": self.namespaces,
            "pids": self.pids,
            "lab_dir_removed": self.lab_dir_removed,
            "message": self.message,
        }


@dataclass(frozen=True)
class HostStatus:
    name: str
    netns: str
    netns_present: bool
    mgmt_ip: str
    agent_pid: int | None
    agent_alive: bool
    agent_healthy: bool


@dataclass(frozen=True)
class LabStatus:
    """A lab as found now; ``up`` means the state file exists and every agent is healthy."""

    name: str
    state_file: bool
    namespaces: list[str]
    hosts: list[HostStatus]
    created: float | None = None

    @property
    def up(self) -> bool:
        return self.state_file and bool(self.hosts) and all(h.agent_healthy for h in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "up": self.up,
            "state_file": self.state_file,
            "created": self.created,
            "namespaces": self.namespaces,
            "hosts": [vars(h) for h in self.hosts],
        }


def _state_path(name: str) -> Path:
    return lab_dir(name) / "lab.json"


def _write_state(state: LabState) -> None:
    write_json_atomic(state.plan.state_file, state.to_dict())


def load_state(name: str) -> LabState:
    """Read ``lab.json`` of lab ``name``; raises NotFound (``LAB_NOT_FOUND``) if absent."""
    validate_lab_name(name)
    path = _state_path(name)
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as err:
        raise NotFound(
            "LAB_NOT_FOUND", f"no lab {name!r} (no readable {path})", "run `segue lab up`"
        ) from err
    plan = plan_lab(name, int(data["hosts"]), tuple(data["port_groups"]), root=path.parent,
                    host_overrides=data.get("host_overrides") or {},
                    controller_settings=data.get("controller_settings") or {})
    return LabState(
        plan=plan,
        agents={str(k): v for k, v in data["agents"].items()},
        agent_argv={str(k): list(v) for k, v in data["agent_argv"].items()},
        created=float(data["created"]),
        controller_pid=data.get("controller_pid"),
    )


def _agent_running(host: HostPlan, pid: int | None) -> bool:
    """True if ``pid`` is alive and inside the host's namespace (guards against pid reuse)."""
    return pid is not None and pid_alive(pid) and pid in netns.pids_in_netns(host.netns)


def agent_healthy(socket_path: Path, timeout: float = 1.0) -> bool:
    """True if the service (an agent or the controller) on ``socket_path`` answers
    ``GET /health`` with 2xx."""
    if not socket_path.exists():
        return False
    with Blocking(ServiceClient(f"unix:{socket_path}", timeout=timeout)) as service:
        try:
            service.run(service.client.request("GET", "/health"))
        except SegueError:
            return False
    return True


def _log_tail(path: Path) -> str:
    return log_tail(path, LOG_TAIL_LINES, "\n")


def _wait_healthy(host: HostPlan, pid: int, deadline: float) -> None:
    """Poll the agent's health until ``deadline``; raises Unavailable
    (``AGENT_START_FAILED``) if it exits or stays silent."""
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        if agent_healthy(host.agent_socket):
            return
        time.sleep(0.1)
    state = "exited" if not pid_alive(pid) else "did not answer /health in time"
    raise Unavailable(
        "AGENT_START_FAILED",
        f"the agent of {host.name} {state}",
        f"read {host.agent_log}",
        log_tail=_log_tail(host.agent_log),
    )


def _spawn_agent(host: HostPlan, argv: list[str]) -> int:
    host.agent_socket.unlink(missing_ok=True)
    return netns.spawn_in_netns(host.netns, argv, host.agent_log).pid


def _clean(name: str) -> DownReport:
    """Kill every process in ``<name>-*`` namespaces, remove them and the lab directory."""
    existed_before = _state_path(name).exists()
    removed, pids = netns.destroy_namespaces(netns.list_namespaces(f"{name}-"))
    directory = lab_dir(name)
    dir_removed = directory.exists()
    shutil.rmtree(directory, ignore_errors=True)
    existed = existed_before or bool(removed or pids) or dir_removed
    return DownReport(name, existed, removed, pids, dir_removed)


def _write_host_files(plan: LabPlan) -> None:
    plan.datastore_dir.mkdir(parents=True, exist_ok=True)
    identity = {"uuid": str(uuid.uuid4()), "name": DATASTORE_NAME}
    plan.datastore_identity.write_text(json.dumps(identity) + "\n")
    for host in plan.hosts:
        host.state_dir.mkdir(parents=True, exist_ok=True)
        host.agent_config_path.write_text(host.agent_config_toml())


def _write_controller_config(plan: LabPlan) -> None:
    plan.controller.directory.mkdir(parents=True, exist_ok=True)
    plan.controller.config_path.write_text(plan.controller.config_toml())


def _start_controller(plan: LabPlan, argv: list[str], deadline: float) -> int:
    """Start the controller in its namespace; returns its pid once it answers /health."""
    ctl = plan.controller
    _write_controller_config(plan)
    ctl.socket.unlink(missing_ok=True)
    pid = netns.spawn_in_netns(ctl.netns, argv, ctl.log).pid
    while time.monotonic() < deadline and pid_alive(pid):
        if agent_healthy(ctl.socket):
            return pid
        time.sleep(0.1)
    raise Unavailable("CONTROLLER_START_FAILED", "the lab's controller did not start",
                      f"read {ctl.log}", log_tail=_log_tail(ctl.log))


def _wait_registered(plan: LabPlan, deadline: float) -> None:
    """Wait until every host's agent has registered with the controller and is connected."""
    want = {h.name for h in plan.hosts}
    seen: set[str] = set()
    with Blocking(ControllerClient(f"unix:{plan.controller.socket}", timeout=5)) as c:
        while time.monotonic() < deadline:
            try:
                hosts = c.run(c.client.list_hosts())
                seen = {h.name for h in hosts if h.state == "connected"}
            except SegueError:
                seen = set()
            if want <= seen:
                return
            time.sleep(0.2)
    raise Unavailable("LAB_REGISTRATION_FAILED",
                      f"hosts {sorted(want - seen)} did not register with the controller",
                      "read the agents' logs (heartbeats to the controller)")


def _build(plan: LabPlan, agent_argv: AgentArgv, health_timeout: float,
           controller_argv: AgentArgv | None) -> LabState:
    netns.create_fabric(plan)
    _write_host_files(plan)
    ca = credentials.init_cluster(plan)
    controller_pid = None
    if controller_argv is not None:
        # a new lab is a new cluster: its empty database is created on this first start
        # only (a restarted controller must find it, ``start_controller``)
        controller_pid = _start_controller(
            plan, [*controller_argv(plan.controller.config_path), "--create-database"],
            time.monotonic() + health_timeout)
        credentials.join_hosts(plan)
    else:
        credentials.issue_host_credentials(plan, ca)
    argvs = {h.name: agent_argv(h.agent_config_path) for h in plan.hosts}
    pids: dict[str, int | None] = {h.name: _spawn_agent(h, argvs[h.name]) for h in plan.hosts}
    deadline = time.monotonic() + health_timeout
    for host in plan.hosts:
        pid = pids[host.name]
        assert pid is not None  # just spawned
        _wait_healthy(host, pid, deadline)
    if controller_argv is not None:
        _wait_registered(plan, time.monotonic() + health_timeout)
    state = LabState(plan, pids, argvs, created=time.time(), controller_pid=controller_pid)
    _write_state(state)
    return state


def lab_is_up(plan: LabPlan) -> bool:
    """True if the lab has a state file and at least one of its agents is still running."""
    try:
        state = load_state(plan.name)
    except NotFound:
        return False
    return any(_agent_running(state.plan.host(h), pid) for h, pid in state.agents.items())


def lab_up(
    name: str = "segue",
    hosts: int = 2,
    port_groups: tuple[str, ...] = ("vm-net",),
    agent_argv: AgentArgv = default_agent_argv,
    health_timeout: float = HEALTH_TIMEOUT_S,
    controller_argv: AgentArgv | None = default_controller_argv,
    host_overrides: dict[str, dict[str, Any]] | None = None,
    controller_settings: dict[str, Any] | None = None,
) -> LabState:
    """Build lab ``name`` and start its agents (see the module docstring); returns its state.
    ``host_overrides`` are merged into those hosts' agent configurations
    (``segue.lab.topology``), e.g. ``{"host2": {"cpu_exclude_features": ["avx2"]}}``;
    ``controller_settings`` into the controller's, e.g. ``{"max_outgoing_per_host": 1}``.

    Raises Conflict (``LAB_EXISTS``) if it is up, InvalidRequest (``LAB_INVALID``) on bad
    input, Unavailable (``LAB_UP_FAILED``, with ``log_tail``) after undoing a failed build."""
    plan = plan_lab(name, hosts, port_groups, host_overrides=host_overrides,
                    controller_settings=controller_settings)
    if lab_is_up(plan):
        raise Conflict(
            "LAB_EXISTS", f"lab {name!r} is already up", hint="run `segue lab down` first"
        )
    _clean(name)
    try:
        return _build(plan, agent_argv, health_timeout, controller_argv)
    except BaseException as err:
        tails = {h.name: _log_tail(h.agent_log) for h in plan.hosts}
        tails["controller"] = _log_tail(plan.controller.log)
        _clean(name)
        if not isinstance(err, Exception):
            raise
        raise Unavailable(
            "LAB_UP_FAILED",
            f"lab {name!r} could not be built: {err}",
            "read the agent log tails in the details; the lab was removed again",
            log_tail=tails,
        ) from err


def lab_down(name: str = "segue") -> DownReport:
    """Kill every process in the lab's namespaces (agents and guests), remove the namespaces
    and the lab directory. Works on a half-made or crashed lab; when there is no lab the
    report says so (``existed`` False). Raises InvalidRequest (``LAB_INVALID``) on a bad name."""
    validate_lab_name(name)
    return _clean(name)


def _host_status(host: HostPlan, pid: int | None, present: list[str]) -> HostStatus:
    alive = _agent_running(host, pid)
    return HostStatus(
        name=host.name,
        netns=host.netns,
        netns_present=host.netns in present,
        mgmt_ip=host.mgmt_ip,
        agent_pid=pid,
        agent_alive=alive,
        agent_healthy=alive and agent_healthy(host.agent_socket),
    )


def lab_status(name: str = "segue") -> LabStatus:
    """What exists of lab ``name`` now: namespaces, and per host its agent's pid, liveness
    and health. A lab without a state file reports its leftover namespaces and no hosts."""
    validate_lab_name(name)
    present = netns.list_namespaces(f"{name}-")
    try:
        state = load_state(name)
    except NotFound:
        return LabStatus(name, state_file=False, namespaces=present, hosts=[])
    hosts = [_host_status(h, state.agents.get(h.name), present) for h in state.plan.hosts]
    return LabStatus(name, True, present, hosts, created=state.created)


def stop_agent(name: str, host: str, timeout: float = 10.0) -> int | None:
    """Stop only the agent of ``host`` (its QEMU guests keep running); returns the pid
    stopped, or None if it was not running. Raises NotFound for an unknown lab or host."""
    state = load_state(name)
    plan = state.plan.host(host)
    pid = state.agents.get(host)
    stopped = pid if _agent_running(plan, pid) else None
    if stopped is not None:
        netns.kill_pids([stopped], timeout=timeout)
    plan.agent_socket.unlink(missing_ok=True)
    state.agents[host] = None
    _write_state(state)
    return stopped


def start_agent(
    name: str,
    host: str,
    agent_argv: AgentArgv | None = None,
    health_timeout: float = HEALTH_TIMEOUT_S,
) -> int:
    """Start the agent of ``host`` (with ``agent_argv``, default the argv it was started with
    at lab up) and wait until it is healthy; returns its pid. If it runs already, returns that
    pid. Raises NotFound for an unknown lab or host, Unavailable (``AGENT_START_FAILED``)."""
    state = load_state(name)
    plan = state.plan.host(host)
    running = state.agents.get(host)
    if running is not None and _agent_running(plan, running):
        return running
    argv = agent_argv(plan.agent_config_path) if agent_argv else state.agent_argv[host]
    pid = _spawn_agent(plan, argv)
    try:
        _wait_healthy(plan, pid, time.monotonic() + health_timeout)
    except BaseException:
        netns.kill_pids([pid])
        raise
    state.agents[host], state.agent_argv[host] = pid, argv
    _write_state(state)
    return pid


def stop_controller(name: str, crash: bool = False) -> int | None:
    """Stop the lab's controller (SIGTERM; with ``crash``, SIGKILL as a dying host would);
    agents and guests keep running. Returns its pid, or None if it was not running."""
    state = load_state(name)
    pid = state.controller_pid
    ctl = state.plan.controller
    stopped = pid if pid is not None and pid in netns.pids_in_netns(ctl.netns) else None
    if stopped is not None and crash:
        os.kill(stopped, signal.SIGKILL)
        netns.kill_pids([stopped])  # waits until it is gone
    elif stopped is not None:
        netns.kill_pids([stopped])
    ctl.socket.unlink(missing_ok=True)
    state.controller_pid = None
    _write_state(state)
    return stopped


def start_controller(name: str, health_timeout: float = HEALTH_TIMEOUT_S) -> int:
    """Start the lab's controller again (same configuration and database) and wait until
    every host is registered; returns its pid."""
    state = load_state(name)
    deadline = time.monotonic() + health_timeout
    pid = _start_controller(state.plan, default_controller_argv(state.plan.controller.config_path),
                            deadline)
    state.controller_pid = pid
    _write_state(state)
    _wait_registered(state.plan, deadline)
    return pid
