"""The lab's topology as pure data: names, addresses and paths, no I/O.

A lab named ``N`` is a set of network namespaces:

- ``N-sw``: the switch; one fabric bridge per network (``fab-mgmt``, ``fab-mig`` and
  ``fab-<tag>`` per port group).
- ``N-host1`` .. ``N-hostK``: hypervisor hosts with ``mgmt0`` (10.210.0.(10+i)/24), ``mig0``
  (10.210.1.(10+i)/24) and per port group a bridge ``br-<tag>`` (no address) whose uplink veth
  ``up-<tag>`` goes to the fabric bridge of that port group.
- ``N-client``: ``vm0`` (10.210.2.2/24) on the fabric of the first port group, where guests get
  10.210.2.100 and up.

``<tag>`` is the port group name when it is short enough for the 15-character interface name
limit, else a short name derived from a hash.

``host_overrides`` (``{"host2": {"cpu_exclude_features": ["avx2", "aes"]}, "host3":
{"port_groups": {}}}``) are merged into a host's agent configuration, so one lab can mix
hosts: an older CPU, a host lacking a port group (it then gets no bridge nor uplink for it).
Errors: ``InvalidRequest`` (``LAB_INVALID``) for
a bad lab name, host count or port group; ``NotFound`` (``LAB_HOST_NOT_FOUND``) for an unknown
host; ``InsufficientResources`` (``LAB_NO_GUEST_IP``, ``LAB_NO_MAC``) when a range is used up.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from segue.agent.config import AgentConfig, ListenConfig, config_from_dict
from segue.api.base import AGENT_PORT, CONTROLLER_PORT
from segue.controller.config import controller_config_from_dict
from segue.domain.errors import InsufficientResources, InvalidRequest, NotFound
from segue.paths import image_cache_dir, lab_dir

MAX_HOSTS = 16
IFNAME_MAX = 15
MGMT_NET = "10.210.0"
MIG_NET = "10.210.1"
VM_NET = "10.210.2"
PREFIXLEN = 24
CLIENT_IP = f"{VM_NET}.2"
GUEST_FIRST = IPv4Address(f"{VM_NET}.100")
GUEST_LAST = IPv4Address(f"{VM_NET}.254")
DATASTORE_NAME = "shared"
DATASTORE_IDENTITY = ".segue-datastore.json"
MIGRATION_INTERFACE = "mig0"
CONTROLLER_IP = f"{MGMT_NET}.2"
CONTROLLER_URL = f"https://{CONTROLLER_IP}:{CONTROLLER_PORT}"

_LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}$")
_PORT_GROUP = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_TAG_MAX = 8  # "h16-" + tag must fit in IFNAME_MAX
_RESERVED_TAGS = frozenset({"mgmt", "mig"})
_BRIDGE = re.compile(r"^[a-z][a-z0-9-]{0,14}$")
# Agent settings a lab host may override; the rest is the lab's wiring.
OVERRIDABLE = frozenset(AgentConfig.model_fields) - {"host", "state_dir", "listen"}
# What ``--older-cpu HOST`` takes away: both are offered by TCG's ``max`` model.
OLDER_CPU_EXCLUDES = ("avx2", "aes")


@dataclass(frozen=True)
class VethEnd:
    """One end of a veth pair: its namespace, name, bridge it joins, and address (CIDR)."""

    netns: str
    ifname: str
    master: str | None = None
    address: str | None = None


@dataclass(frozen=True)
class VethPair:
    """A veth pair; ``switch`` is the end on the fabric side (in the switch namespace)."""

    switch: VethEnd
    far: VethEnd


@dataclass(frozen=True)
class BridgePlan:
    netns: str
    ifname: str


@dataclass(frozen=True)
class HostPlan:
    """One hypervisor host: namespace, addresses, bridges and the agent's files."""

    name: str
    netns: str
    mgmt_ip: str
    mig_ip: str
    port_groups: dict[str, str]
    state_dir: Path
    datastore_dir: Path
    agent_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def agent_socket(self) -> Path:
        return self.state_dir / "agent.sock"

    @property
    def agent_config_path(self) -> Path:
        return self.state_dir / "agent.toml"

    @property
    def agent_log(self) -> Path:
        return self.state_dir / "agent.log"

    @property
    def pki_dir(self) -> Path:
        """The host's credential directory (``segue.security.store``)."""
        return self.state_dir / "pki"

    def agent_config(self) -> dict[str, Any]:
        """The agent's configuration as data shaped like its TOML file
        (``segue.agent.config``), with this host's overrides merged in."""
        return AgentConfig(
            host=self.name,
            state_dir=self.state_dir,
            listen=ListenConfig(address=self.mgmt_ip, port=AGENT_PORT,
                                unix_socket=str(self.agent_socket)),
            port_groups=dict(self.port_groups),
            datastores={DATASTORE_NAME: self.datastore_dir},
            # where ``segue image build`` puts the test image: its kernel and initrd boot
            image_dirs=[image_cache_dir()],
            migration_interface=MIGRATION_INTERFACE,
            accel="auto",
        ).to_dict() | {
            "controller_url": CONTROLLER_URL,
            "advertise_url": f"https://{self.mgmt_ip}:{AGENT_PORT}",
            "pki_dir": str(self.pki_dir),
        } | self.agent_overrides

    def agent_config_toml(self) -> str:
        """The text of the agent's TOML file; raises InvalidRequest (``AGENT_CONFIG_INVALID``)
        if the overrides make a configuration the agent would refuse."""
        return config_from_dict(self.agent_config()).to_toml()


@dataclass(frozen=True)
class ControllerPlan:
    """The lab's controller: its namespace on the management network and its files."""

    netns: str
    mgmt_ip: str
    directory: Path
    settings: dict[str, Any] = field(default_factory=dict)  # merged into config()

    @property
    def socket(self) -> Path:
        return self.directory / "controller.sock"

    @property
    def config_path(self) -> Path:
        return self.directory / "controller.toml"

    @property
    def log(self) -> Path:
        return self.directory / "controller.log"

    @property
    def pki_dir(self) -> Path:
        """The controller's credential directory: the cluster's CA and its own set."""
        return self.directory / "pki"

    def config(self) -> dict[str, Any]:
        """The controller's configuration as data shaped like its TOML file
        (``segue.controller.config``), with the lab's settings merged in."""
        return {
            "database_url": f"sqlite:///{self.directory / 'controller.db'}",
            "listen": {"address": self.mgmt_ip, "port": CONTROLLER_PORT,
                       "unix_socket": str(self.socket)},
            "heartbeat_timeout": 10.0,
            "pki_dir": str(self.pki_dir),
        } | self.settings

    def config_toml(self) -> str:
        """The text of the controller's TOML file; raises InvalidRequest
        (``CONTROLLER_CONFIG_INVALID``, ``MIGRATION_LIMIT_INVALID``) for bad settings."""
        return controller_config_from_dict(self.config()).to_toml()


@dataclass(frozen=True)
class LabPlan:
    """Everything ``lab up`` creates, as names; ``netns.create_fabric`` makes it real."""

    name: str
    lab_dir: Path
    port_groups: tuple[str, ...]
    switch_ns: str
    client_ns: str
    client_ip: str
    hosts: tuple[HostPlan, ...]
    bridges: tuple[BridgePlan, ...]
    veths: tuple[VethPair, ...]
    datastore_dir: Path
    controller: ControllerPlan
    fabric_bridges: dict[str, str] = field(default_factory=dict)
    host_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.switch_ns, self.controller.netns, *(h.netns for h in self.hosts),
                self.client_ns)

    @property
    def ns_prefix(self) -> str:
        return f"{self.name}-"

    @property
    def state_file(self) -> Path:
        return self.lab_dir / "lab.json"

    @property
    def datastore_identity(self) -> Path:
        return self.datastore_dir / DATASTORE_IDENTITY

    def host(self, name: str) -> HostPlan:
        """The host called ``name``; raises NotFound (``LAB_HOST_NOT_FOUND``) if none."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise NotFound(
            "LAB_HOST_NOT_FOUND",
            f"lab {self.name!r} has no host {name!r}",
            f"use one of {', '.join(h.name for h in self.hosts)}",
        )


def _invalid(message: str, hint: str) -> InvalidRequest:
    return InvalidRequest("LAB_INVALID", message, hint)


def validate_lab_name(name: str) -> None:
    """Raise InvalidRequest unless ``name`` is a lowercase letter then up to 15 [a-z0-9]."""
    if not _LAB_NAME.match(name):
        raise _invalid(
            f"bad lab name {name!r}",
            "use a lowercase letter followed by up to 15 lowercase letters or digits "
            "(no '-': it separates the lab name from the host in namespace names)",
        )


def port_group_tag(port_group: str) -> str:
    """A short name for ``port_group`` that fits interface names (at most 8 characters)."""
    if len(port_group) <= _TAG_MAX and port_group not in _RESERVED_TAGS:
        return port_group
    digest = hashlib.sha256(port_group.encode()).hexdigest()[:4]
    return f"{port_group[:3].rstrip('-')}-{digest}"


def _check_inputs(name: str, hosts: int, port_groups: tuple[str, ...]) -> None:
    validate_lab_name(name)
    if not 1 <= hosts <= MAX_HOSTS:
        raise _invalid(f"a lab has 1 to {MAX_HOSTS} hosts, not {hosts}", "pass --hosts 1..16")
    if not port_groups:
        raise _invalid("a lab needs at least one port group", "pass a port group, e.g. vm-net")
    for pg in port_groups:
        if not _PORT_GROUP.match(pg):
            raise _invalid(
                f"bad port group name {pg!r}",
                "use a lowercase letter then up to 31 lowercase letters, digits or '-'",
            )
    if len(set(port_groups)) != len(port_groups):
        raise _invalid("port group names repeat", "name each port group once")
    tags = [port_group_tag(pg) for pg in port_groups]
    if len(set(tags)) != len(tags):
        raise _invalid("two port group names map to the same short name", "rename one")


def _check_overrides(hosts: int, port_groups: tuple[str, ...],
                     host_overrides: dict[str, dict[str, Any]]) -> None:
    """Overrides name existing hosts and overridable settings; overridden port groups are
    the lab's, each on a valid bridge name of its own."""
    for host, overrides in host_overrides.items():
        if host not in {f"host{i}" for i in range(1, hosts + 1)}:
            raise _invalid(f"overrides for {host!r}, which this lab does not have",
                           f"name hosts host1..host{hosts}")
        unknown = sorted(set(overrides) - OVERRIDABLE)
        if unknown:
            raise _invalid(f"{host}: {', '.join(unknown)} cannot be overridden",
                           f"override only {', '.join(sorted(OVERRIDABLE))}")
        groups: dict[str, str] = overrides.get("port_groups", {})
        if not set(groups) <= set(port_groups):
            raise _invalid(f"{host}: port groups {sorted(set(groups) - set(port_groups))} "
                           "are not in the lab", f"use some of {', '.join(port_groups)}")
        bridges = list(groups.values())
        if len(set(bridges)) != len(bridges) or not all(_BRIDGE.match(b) for b in bridges):
            raise _invalid(f"{host}: bad or repeated bridge names {bridges}",
                           "give each port group its own interface name (<= 15 characters)")


def _host_plan(name: str, index: int, root: Path, port_groups: tuple[str, ...],
               overrides: dict[str, Any]) -> HostPlan:
    """Host ``index``; raises InvalidRequest (``AGENT_CONFIG_INVALID``) if its overrides
    make an agent configuration the agent would refuse."""
    host = f"host{index}"
    default_groups = {pg: f"br-{port_group_tag(pg)}" for pg in port_groups}
    plan = HostPlan(
        name=host,
        netns=f"{name}-{host}",
        mgmt_ip=f"{MGMT_NET}.{10 + index}",
        mig_ip=f"{MIG_NET}.{10 + index}",
        port_groups=dict(overrides.get("port_groups", default_groups)),
        state_dir=root / host,
        datastore_dir=root / "datastores" / DATASTORE_NAME,
        agent_overrides=dict(overrides),
    )
    config_from_dict(plan.agent_config())
    return plan


def _host_veths(host: HostPlan, index: int, switch_ns: str) -> list[VethPair]:
    def pair(tag: str, far_name: str, master: str | None, address: str | None) -> VethPair:
        return VethPair(
            VethEnd(switch_ns, f"h{index}-{tag}", f"fab-{tag}"),
            VethEnd(host.netns, far_name, master, address),
        )

    veths = [
        pair("mgmt", "mgmt0", None, f"{host.mgmt_ip}/{PREFIXLEN}"),
        pair("mig", MIGRATION_INTERFACE, None, f"{host.mig_ip}/{PREFIXLEN}"),
    ]
    for pg, bridge in host.port_groups.items():
        tag = port_group_tag(pg)
        veths.append(pair(tag, f"up-{tag}", bridge, None))
    return veths


def plan_lab(
    name: str = "segue",
    hosts: int = 2,
    port_groups: tuple[str, ...] = ("vm-net",),
    root: Path | None = None,
    host_overrides: dict[str, dict[str, Any]] | None = None,
    controller_settings: dict[str, Any] | None = None,
) -> LabPlan:
    """Plan a lab: namespaces, bridges, veths, addresses and paths (under ``root``, default
    ``segue.paths.lab_dir(name)``), each host's agent settings with its ``host_overrides``,
    the controller's configuration with ``controller_settings`` (e.g. per-host limits).
    Raises InvalidRequest (``LAB_INVALID``, ``AGENT_CONFIG_INVALID``) on bad input."""
    port_groups = tuple(port_groups)
    host_overrides = host_overrides or {}
    _check_inputs(name, hosts, port_groups)
    _check_overrides(hosts, port_groups, host_overrides)
    root = root if root is not None else lab_dir(name)
    switch_ns, client_ns = f"{name}-sw", f"{name}-client"
    host_plans = tuple(_host_plan(name, i, root, port_groups, host_overrides.get(f"host{i}", {}))
                       for i in range(1, hosts + 1))
    fabric = {net: f"fab-{net}" for net in ("mgmt", "mig")}
    fabric.update({pg: f"fab-{port_group_tag(pg)}" for pg in port_groups})
    bridges = [BridgePlan(switch_ns, br) for br in fabric.values()]
    veths: list[VethPair] = []
    for i, host in enumerate(host_plans, start=1):
        bridges.extend(BridgePlan(host.netns, br) for br in host.port_groups.values())
        veths.extend(_host_veths(host, i, switch_ns))
    controller = ControllerPlan(f"{name}-ctl", CONTROLLER_IP, root,
                                dict(controller_settings or {}))
    veths.append(VethPair(VethEnd(switch_ns, "ctl-mgmt", "fab-mgmt"),
                          VethEnd(controller.netns, "mgmt0", None,
                                  f"{CONTROLLER_IP}/{PREFIXLEN}")))
    client_tag = port_group_tag(port_groups[0])
    veths.append(
        VethPair(
            VethEnd(switch_ns, f"cl-{client_tag}", f"fab-{client_tag}"),
            VethEnd(client_ns, "vm0", None, f"{CLIENT_IP}/{PREFIXLEN}"),
        )
    )
    return LabPlan(
        name=name,
        lab_dir=root,
        port_groups=port_groups,
        switch_ns=switch_ns,
        client_ns=client_ns,
        client_ip=CLIENT_IP,
        hosts=host_plans,
        bridges=tuple(bridges),
        veths=tuple(veths),
        datastore_dir=root / "datastores" / DATASTORE_NAME,
        controller=controller,
        fabric_bridges=fabric,
        host_overrides={h: dict(o) for h, o in host_overrides.items()},
    )


def mixed_host_overrides(port_groups: tuple[str, ...], older_cpu: list[str],
                         without_port_group: list[str]) -> dict[str, dict[str, Any]]:
    """Overrides for ``lab up --older-cpu HOST[:FEAT,...]`` (default features
    ``OLDER_CPU_EXCLUDES``) and ``--without-port-group HOST:PORTGROUP``.

    Raises InvalidRequest (``LAB_INVALID``) for a malformed value."""
    out: dict[str, dict[str, Any]] = {}
    for item in older_cpu:
        host, _, feats = item.partition(":")
        features = [f for f in feats.split(",") if f] if feats else list(OLDER_CPU_EXCLUDES)
        out.setdefault(host, {})["cpu_exclude_features"] = features
    for item in without_port_group:
        host, sep, group = item.partition(":")
        if not sep or group not in port_groups:
            raise _invalid(f"--without-port-group {item!r} is not HOST:PORTGROUP of this lab",
                           f"e.g. host3:{port_groups[0]}")
        groups = out.setdefault(host, {}).setdefault(
            "port_groups", {pg: f"br-{port_group_tag(pg)}" for pg in port_groups})
        groups.pop(group, None)
    return out


def next_guest_ip(used: Iterable[str]) -> str:
    """The lowest free guest address in 10.210.2.100-254 not in ``used``.

    Raises InsufficientResources (``LAB_NO_GUEST_IP``) when all are taken."""
    taken = {IPv4Address(ip) for ip in used}
    addr = GUEST_FIRST
    while addr <= GUEST_LAST:
        if addr not in taken:
            return str(addr)
        addr += 1
    raise InsufficientResources(
        "LAB_NO_GUEST_IP",
        f"all guest addresses {GUEST_FIRST}-{GUEST_LAST} are in use",
        "delete a VM to free an address",
    )


def _format_mac(tail: bytes) -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail[:3])


def guest_mac(vm_name: str) -> str:
    """A deterministic locally administered MAC ``52:54:00:xx:xx:xx`` from a VM name."""
    return _format_mac(hashlib.sha256(vm_name.encode()).digest())


def random_guest_mac(used: Iterable[str], rng: random.Random | None = None) -> str:
    """A random ``52:54:00:xx:xx:xx`` MAC not in ``used`` (compared case-insensitively).

    Raises InsufficientResources (``LAB_NO_MAC``) if 1000 draws all collide."""
    taken = {mac.lower() for mac in used}
    rng = rng or random.Random()
    for _ in range(1000):
        mac = _format_mac(rng.randbytes(3))
        if mac not in taken:
            return mac
    raise InsufficientResources("LAB_NO_MAC", "no free MAC address found", "free some MACs")


def plan_to_dict(plan: LabPlan) -> dict[str, Any]:
    """A JSON-able summary of the plan (for ``lab.json`` and ``lab status --json``)."""
    return {
        "name": plan.name,
        "lab_dir": str(plan.lab_dir),
        "port_groups": list(plan.port_groups),
        "namespaces": list(plan.namespaces),
        "client": {"netns": plan.client_ns, "ip": plan.client_ip},
        "datastore": str(plan.datastore_dir),
        "host_overrides": plan.host_overrides,
        "hosts": [
            {
                "name": h.name,
                "netns": h.netns,
                "mgmt_ip": h.mgmt_ip,
                "mig_ip": h.mig_ip,
                "port_groups": dict(h.port_groups),
                "state_dir": str(h.state_dir),
                "agent_socket": str(h.agent_socket),
            }
            for h in plan.hosts
        ],
    }
