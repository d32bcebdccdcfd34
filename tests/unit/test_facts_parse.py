"""Pure parsers of host facts, and reading host facts and VM specs as stored or received."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from checks_factory import DS_UUID
from checks_factory import facts as facts_of

from segue.agent.facts_parse import (
    NON_FEATURE_PROPS,
    choose_accel,
    features_from_expansion,
    machines_from_query,
    offered_features,
    parse_cpu_model_name,
    parse_link_speed,
    parse_meminfo,
)
from segue.agent.vmstore import VMStore
from segue.checks.context import host_facts_from_dict
from segue.domain.errors import InvalidRequest
from segue.domain.host import MemoryFacts
from segue.domain.vm import DiskSpec, NicSpec, VMSpec, vm_spec_from_dict

MEMINFO = """\
MemTotal:       24731708 kB
MemFree:        21982492 kB
MemAvailable:   24032908 kB
Buffers:          123456 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


def test_parse_meminfo_in_mib() -> None:
    assert parse_meminfo(MEMINFO) == (24731708 // 1024, 24032908 // 1024)
    assert parse_meminfo("MemAvailable: 2048 kB\nMemTotal: 4096 kB\n") == (4, 2)


@pytest.mark.parametrize(("text", "missing"), [
    ("MemTotal: 4096 kB\nMemFree: 1024 kB\n", "MemAvailable"),
    ("MemAvailable: 4096 kB\n", "MemTotal"),
    ("", "MemTotal"),
    ("MemTotal: lots\nMemAvailable: 1024 kB\n", "MemTotal"),
])
def test_parse_meminfo_missing_key(text: str, missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        parse_meminfo(text)


def test_parse_cpu_model_name() -> None:
    cpuinfo = ("processor\t: 0\nvendor_id\t: GenuineIntel\n"
               "model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\n"
               "processor\t: 1\nmodel name\t: Other CPU\n")
    assert parse_cpu_model_name(cpuinfo) == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    assert parse_cpu_model_name("processor\t: 0\nmodel\t\t: 85\n") == "unknown"
    assert parse_cpu_model_name("") == "unknown"


@pytest.mark.parametrize(("requested", "usable", "modules", "accel", "reason_has"), [
    ("tcg", True, {"kvm_intel"}, "tcg", "tcg requested"),
    ("kvm", True, {"kvm_intel"}, "kvm", "kvm requested and usable"),
    ("kvm", True, {"kvm_amd"}, "kvm", "usable"),
    ("kvm", False, {"kvm_intel"}, "tcg", "not usable"),
    ("kvm", True, {"kvm_pvm"}, "tcg", "not usable"),
    ("kvm", True, set(), "tcg", "not usable"),
    ("auto", True, {"kvm_intel"}, "kvm", "hardware KVM"),
    ("auto", True, {"kvm_amd", "kvm_pvm"}, "kvm", "hardware KVM"),
    ("auto", True, {"kvm_pvm"}, "tcg", "kvm_pvm"),
    ("auto", False, {"kvm_pvm"}, "tcg", "kvm_pvm"),
    ("auto", False, {"kvm_intel"}, "tcg", "no usable /dev/kvm"),
    ("auto", False, set(), "tcg", "no usable /dev/kvm"),
    ("auto", True, set(), "tcg", "no usable /dev/kvm"),
])
def test_choose_accel(requested: str, usable: bool, modules: set[str], accel: str,
                      reason_has: str) -> None:
    chosen, reason = choose_accel(requested, usable, modules)
    assert chosen == accel
    assert reason_has in reason


def test_features_from_expansion_keeps_only_enabled_features() -> None:
    expansion = {"model": {"name": "max", "props": {
        "sse4.2": True, "avx2": True, "vmx": False, "pmu": True, "migratable": True,
        "enforce": True, "x-force-features": True, "x-intel-pt-auto-level": True,
        "x-something-new": True, "family": 6, "model-id": "QEMU TCG CPU", "lm": True,
        "kvm": True, "hv-passthrough": True,
    }}}
    assert features_from_expansion(expansion) == ["avx2", "lm", "sse4.2"]


def test_features_from_expansion_of_nothing() -> None:
    assert features_from_expansion({}) == []
    assert features_from_expansion({"model": {"name": "max"}}) == []


def test_non_feature_props_are_not_features() -> None:
    props = dict.fromkeys(NON_FEATURE_PROPS, True)
    assert features_from_expansion({"model": {"props": props}}) == []


def test_machines_from_query() -> None:
    answer = [
        {"name": "pc-q35-7.2", "alias": "q35", "cpu-max": 288, "deprecated": False},
        {"name": "pc-i440fx-7.2", "alias": "pc", "is-default": True, "cpu-max": 255},
        {"name": "pc-i440fx-7.1", "cpu-max": 255},
        {"name": "none", "cpu-max": 1},
        {"name": "microvm", "alias": "", "cpu-max": 288},
    ]
    names, aliases = machines_from_query(answer)
    assert names == ["microvm", "none", "pc-i440fx-7.1", "pc-i440fx-7.2", "pc-q35-7.2"]
    assert aliases == {"q35": "pc-q35-7.2", "pc": "pc-i440fx-7.2"}


def test_machines_from_query_empty() -> None:
    assert machines_from_query([]) == ([], {})


@pytest.mark.parametrize(("text", "speed"), [
    ("10000\n", 10000), ("1000", 1000), ("-1\n", None), ("", None), ("\n", None),
    ("0", None), ("unknown", None),
])
def test_parse_link_speed(text: str, speed: int | None) -> None:
    assert parse_link_speed(text) == speed


def test_offered_features_drop_the_excluded_under_either_spelling() -> None:
    features = ["aes", "avx2", "fpu", "lahf-lm", "lahf_lm"]
    assert offered_features(features, ["avx2", "lahf_lm"]) == ["aes", "fpu"]
    assert offered_features(features, []) == features


# ---- facts and specs as stored or received: read strictly, missing parts empty ----

FULL_FACTS = facts_of("host2")


def test_stored_facts_read_back_equal() -> None:
    facts = host_facts_from_dict("host2", FULL_FACTS)
    assert host_facts_from_dict("host2", facts.to_dict()) == facts
    assert facts.datastores[0].uuid == DS_UUID and facts.migration.speed_mbps == 10000


@pytest.mark.parametrize("data", [
    {},
    {"cpu": {"features": ["aes"]}},
    {"name": "", "memory": {}, "port_groups": [{"name": "vm-net"}]},
    {"migration": {"interface": "mig0"}, "datastores": [{"name": "shared"}]},
])
def test_facts_stored_before_every_part_was_reported_read_as_empty(
        data: dict[str, Any]) -> None:
    facts = host_facts_from_dict("h9", data)
    assert facts.name == "h9"
    assert facts.cpu.logical_cpus == 0 and facts.cpu.accel == ""
    assert facts.memory == MemoryFacts(0, 0)
    assert facts.qemu.machines == [] and facts.qemu.version == ""
    assert facts.migration.present is False and facts.migration.speed_mbps is None
    assert all(not p.exists and p.bridge == "" for p in facts.port_groups)
    assert all(not d.present and d.uuid is None for d in facts.datastores)
    assert facts.vms == 0


def test_facts_keys_unknown_here_are_ignored() -> None:
    facts = host_facts_from_dict("h9", {"gpu": {"count": 1}, "cpu": {"cores_per_die": 4}})
    assert facts.name == "h9"


@pytest.mark.parametrize(("change", "field"), [
    ({"memory": {"total_mib": "512", "available_mib": 1}}, "memory.total_mib"),
    ({"memory": {"total_mib": 512.0}}, "memory.total_mib"),
    ({"vms": True}, "vms"),
    ({"vms": "3"}, "vms"),
    ({"cpu": {"features": "aes,avx"}}, "cpu.features"),
    ({"cpu": {"logical_cpus": None}}, "cpu.logical_cpus"),
    ({"memory": None}, "memory"),
    ({"migration": {"up": "yes"}}, "migration.up"),
    ({"migration": {"speed_mbps": "10000"}}, "migration.speed_mbps"),
    ({"port_groups": [{"bridge": "br-vm"}]}, "port_groups.0.name"),
    ({"port_groups": {"name": "vm-net"}}, "port_groups"),
    ({"qemu": {"machine_aliases": {"pc": 7}}}, "qemu.machine_aliases.pc"),
    ({"datastores": [{"name": "shared", "free_bytes": -1.5}]}, "datastores.0.free_bytes"),
])
def test_facts_of_the_wrong_type_are_refused(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        host_facts_from_dict("host2", {**FULL_FACTS, **change})
    assert err.value.code == "HOST_FACTS_INVALID"
    assert err.value.details["field"] == field and field in err.value.message


def test_facts_with_nan_are_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        host_facts_from_dict("host2", {**FULL_FACTS, "vms": float("nan")})
    assert err.value.code == "HOST_FACTS_INVALID"


SPEC: dict[str, Any] = {
    "name": "web1", "datastore": "shared", "uuid": "", "memory_mib": 512, "vcpus": 2,
    "cpu_model": "qemu64", "machine": "pc",
    "nics": [{"port_group": "vm-net", "mac": "52:54:00:00:00:01", "model": "e1000"}],
    "disks": [{"datastore": "shared", "path": "web1/d.qcow2", "format": "raw",
               "readonly": True}],
    "kernel": "/k", "initrd": None, "cmdline": "", "serial_log": None,
}


def test_a_stored_spec_reads_back_equal() -> None:
    spec = vm_spec_from_dict(SPEC)
    assert spec.to_dict() == SPEC
    assert spec.nics == [NicSpec("vm-net", "52:54:00:00:00:01", "e1000")]
    assert spec.disks == [DiskSpec("shared", "web1/d.qcow2", "raw", True)]
    assert vm_spec_from_dict({"name": "web1", "datastore": "shared", "disks": None}) == VMSpec(
        "web1", "shared")


@pytest.mark.parametrize(("change", "field"), [
    ({"memory_mib": "512"}, "memory_mib"),
    ({"memory_mib": 512.5}, "memory_mib"),
    ({"vcpus": True}, "vcpus"),
    ({"name": 7}, "name"),
    ({"kernel": 1}, "kernel"),
    ({"colour": "blue"}, "colour"),
    ({"nics": [{"port_group": "vm-net"}]}, "nics.0.mac"),
    ({"nics": [{"port_group": "vm-net", "mac": "52:54:00:00:00:01", "vlan": 3}]},
     "nics.0.vlan"),
    ({"disks": [{"datastore": "shared", "path": "d", "readonly": "yes"}]}, "disks.0.readonly"),
    ({"nics": "vm-net"}, "nics"),
])
def test_specs_of_the_wrong_shape_are_refused(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        vm_spec_from_dict({**SPEC, **change})
    assert err.value.code == "VM_SPEC_INVALID"
    assert err.value.details["field"] == field and field in err.value.message


@pytest.mark.parametrize("data", [None, [], "web1", {"name": "web1"}])
def test_what_is_not_a_spec_is_refused(data: object) -> None:
    with pytest.raises(InvalidRequest) as err:
        vm_spec_from_dict(data)
    assert err.value.code == "VM_SPEC_INVALID"


def test_a_host_skips_malformed_stored_specs(tmp_path: Path) -> None:
    store = VMStore("host1", tmp_path / "vms", {"shared": tmp_path / "ds"})
    good = vm_spec_from_dict(SPEC)
    store.save(good)
    for name, local, shared in [
        ("bad1", {**SPEC, "name": "bad1", "colour": "blue"}, {"host": "host1", "spec": None}),
        ("bad2", {**SPEC, "name": "bad2", "memory_mib": "512"}, {"host": 1, "spec": SPEC}),
        ("bad3", ["not", "a", "spec"], ["nor", "this"]),
    ]:
        (tmp_path / "vms" / name).mkdir(parents=True)
        (tmp_path / "vms" / name / "spec.json").write_text(json.dumps(local))
        (tmp_path / "ds" / name).mkdir(parents=True)
        (tmp_path / "ds" / name / "vm.json").write_text(json.dumps(shared))
    assert store.local_specs() == [good]
    assert [(e.spec, e.host) for e in store.datastore_entries()] == [(good, "host1")]
