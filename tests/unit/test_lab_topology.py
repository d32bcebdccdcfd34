"""The lab topology: names, addresses, paths and input checks (pure, no root needed)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from segue.agent.config import config_from_dict
from segue.domain.errors import InsufficientResources, InvalidRequest, NotFound
from segue.lab.topology import (
    IFNAME_MAX,
    guest_mac,
    mixed_host_overrides,
    next_guest_ip,
    plan_lab,
    plan_to_dict,
    port_group_tag,
    random_guest_mac,
)

LONG_GROUPS = ("vm-net", "storage-network-long", "mgmt", "mig", "a")


def _all_ifnames(plan_hosts: int, groups: tuple[str, ...]) -> dict[str, list[str]]:
    plan = plan_lab("lab", plan_hosts, groups, root=Path("/x"))
    names: dict[str, list[str]] = {ns: ["lo"] for ns in plan.namespaces}
    for bridge in plan.bridges:
        names[bridge.netns].append(bridge.ifname)
    for pair in plan.veths:
        names[pair.switch.netns].append(pair.switch.ifname)
        names[pair.far.netns].append(pair.far.ifname)
    return names


def test_default_plan() -> None:
    plan = plan_lab("segue", 2, root=Path("/labs/segue"))
    assert plan.namespaces == ("segue-sw", "segue-ctl", "segue-host1", "segue-host2",
                               "segue-client")
    host1 = plan.host("host1")
    assert (host1.mgmt_ip, host1.mig_ip) == ("10.210.0.11", "10.210.1.11")
    assert host1.port_groups == {"vm-net": "br-vm-net"}
    assert plan.fabric_bridges == {"mgmt": "fab-mgmt", "mig": "fab-mig", "vm-net": "fab-vm-net"}
    assert plan.client_ip == "10.210.2.2"
    client = [p.far for p in plan.veths if p.far.netns == "segue-client"]
    assert [(c.ifname, c.address) for c in client] == [("vm0", "10.210.2.2/24")]
    assert plan.datastore_identity == Path("/labs/segue/datastores/shared/.segue-datastore.json")
    assert host1.agent_socket == Path("/labs/segue/host1/agent.sock")
    ctl = [p.far for p in plan.veths if p.far.netns == "segue-ctl"]
    assert [(c.ifname, c.address) for c in ctl] == [("mgmt0", "10.210.0.2/24")]
    assert plan.controller.socket == Path("/labs/segue/controller.sock")
    config = host1.agent_config()
    assert config["controller_url"] == "https://10.210.0.2:7700"
    assert config["advertise_url"] == "https://10.210.0.11:7600"


def test_plan_root_defaults_to_segue_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGUE_HOME", "/tmp/sh")
    assert plan_lab("abc", 1).lab_dir == Path("/tmp/sh/lab/abc")


def test_agents_may_boot_the_image_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab's agents take kernels from where ``segue image build`` puts them, whatever
    the lab's root: the agent refuses a kernel outside its image dirs and datastores."""
    monkeypatch.setenv("SEGUE_HOME", "/tmp/sh")
    config = config_from_dict(plan_lab("abc", 1, root=Path("/labs/abc")).hosts[0]
                              .agent_config())
    assert config.image_dirs == [Path("/tmp/sh/images")]


@pytest.mark.parametrize("hosts", [1, 16])
def test_interface_names_fit_and_are_unique(hosts: int) -> None:
    for ns, names in _all_ifnames(hosts, LONG_GROUPS).items():
        assert all(len(n) <= IFNAME_MAX for n in names), names
        assert len(names) == len(set(names)), ns


def test_tags_are_short_and_avoid_reserved() -> None:
    assert port_group_tag("vm-net") == "vm-net"
    for group in ("mgmt", "mig", "storage-network-long"):
        tag = port_group_tag(group)
        assert tag not in ("mgmt", "mig") and len(tag) <= 8


def test_addresses_are_unique() -> None:
    plan = plan_lab("lab", 16, root=Path("/x"))
    addresses = [p.far.address for p in plan.veths if p.far.address]
    assert len(addresses) == 2 * 16 + 2  # hosts, the client, the controller
    assert len(set(addresses)) == len(addresses)


def test_agent_config_round_trips() -> None:
    plan = plan_lab("segue", 2, root=Path("/labs/segue"))
    data = plan.host("host2").agent_config()
    config = config_from_dict(data)
    assert config.listen.address == "10.210.0.12"
    assert config.listen.port == 7600
    assert config.listen.unix_socket == "/labs/segue/host2/agent.sock"
    assert config.port_groups == {"vm-net": "br-vm-net"}
    assert config.datastores == {"shared": Path("/labs/segue/datastores/shared")}
    assert config.migration_interface == "mig0"
    assert config.state_dir == Path("/labs/segue/host2")
    assert plan_to_dict(plan)["hosts"][1]["mgmt_ip"] == "10.210.0.12"


@pytest.mark.parametrize(
    ("name", "hosts", "groups"),
    [
        ("Bad", 2, ("vm-net",)),
        ("a-b", 2, ("vm-net",)),
        ("", 2, ("vm-net",)),
        ("x" * 17, 2, ("vm-net",)),
        ("lab", 0, ("vm-net",)),
        ("lab", 17, ("vm-net",)),
        ("lab", 2, ()),
        ("lab", 2, ("Vm net",)),
        ("lab", 2, ("vm-net", "vm-net")),
    ],
)
def test_bad_input_is_rejected(name: str, hosts: int, groups: tuple[str, ...]) -> None:
    with pytest.raises(InvalidRequest) as err:
        plan_lab(name, hosts, groups, root=Path("/x"))
    assert err.value.code == "LAB_INVALID"
    assert err.value.hint


def test_unknown_host() -> None:
    with pytest.raises(NotFound):
        plan_lab("lab", 2, root=Path("/x")).host("host3")


def test_guest_ip_allocation() -> None:
    assert next_guest_ip([]) == "10.210.2.100"
    assert next_guest_ip(["10.210.2.100", "10.210.2.102"]) == "10.210.2.101"
    every = [f"10.210.2.{i}" for i in range(100, 255)]
    assert next_guest_ip(every[:-1]) == "10.210.2.254"
    with pytest.raises(InsufficientResources):
        next_guest_ip(every)


def test_macs() -> None:
    mac = guest_mac("vm1")
    assert mac == guest_mac("vm1") != guest_mac("vm2")
    assert mac.startswith("52:54:00:") and len(mac) == 17
    rng = random.Random(1)
    first = random_guest_mac([], random.Random(1))
    assert random_guest_mac([first.upper()], rng) != first


# ---- mixed labs: per-host agent overrides ----

MIXED = {"host2": {"cpu_exclude_features": ["avx2", "aes"]}, "host3": {"port_groups": {}}}


def test_overrides_reach_the_agent_config_and_the_fabric() -> None:
    plan = plan_lab("mix", 3, root=Path("/x"), host_overrides=MIXED)
    older = config_from_dict(plan.host("host2").agent_config())
    assert older.cpu_exclude_features == ["avx2", "aes"]
    assert older.port_groups == {"vm-net": "br-vm-net"}
    assert config_from_dict(plan.host("host3").agent_config()).port_groups == {}
    assert config_from_dict(plan.host("host1").agent_config()).cpu_exclude_features == []
    bridges = {(b.netns, b.ifname) for b in plan.bridges}
    assert ("mix-host2", "br-vm-net") in bridges and ("mix-host3", "br-vm-net") not in bridges
    host3_ifs = {p.far.ifname for p in plan.veths if p.far.netns == "mix-host3"}
    assert host3_ifs == {"mgmt0", "mig0"}  # no uplink for the port group it lacks
    assert plan_to_dict(plan)["host_overrides"] == MIXED


def test_plain_lab_has_no_overrides() -> None:
    plan = plan_lab("lab", 2, root=Path("/x"))
    assert plan.host_overrides == {} and plan_to_dict(plan)["host_overrides"] == {}


@pytest.mark.parametrize(("overrides", "code"), [
    ({"host4": {"accel": "tcg"}}, "LAB_INVALID"),
    ({"host1": {"listen": {}}}, "LAB_INVALID"),
    ({"host1": {"port_groups": {"other": "br-other"}}}, "LAB_INVALID"),
    ({"host1": {"port_groups": {"vm-net": "Bad Name"}}}, "LAB_INVALID"),
    ({"host1": {"cpu_exclude_features": ["avx2,+aes"]}}, "AGENT_CONFIG_INVALID"),
    ({"host1": {"accel": "fast"}}, "AGENT_CONFIG_INVALID"),
])
def test_bad_overrides_are_refused(overrides: dict[str, dict[str, object]], code: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        plan_lab("lab", 3, root=Path("/x"), host_overrides=overrides)
    assert err.value.code == code and err.value.hint


def test_mixed_host_overrides_from_the_cli_options() -> None:
    groups = ("vm-net", "backup")
    assert mixed_host_overrides(groups, ["host2"], ["host3:vm-net"]) == {
        "host2": {"cpu_exclude_features": ["avx2", "aes"]},
        "host3": {"port_groups": {"backup": "br-backup"}},
    }
    both = mixed_host_overrides(groups, ["host2:sse4.2,movbe"], ["host2:vm-net", "host2:backup"])
    assert both == {"host2": {"cpu_exclude_features": ["sse4.2", "movbe"], "port_groups": {}}}
    for bad in ("host3", "host3:nope"):
        with pytest.raises(InvalidRequest):
            mixed_host_overrides(groups, [], [bad])
