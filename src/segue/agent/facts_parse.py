"""Pure parsers for host facts: /proc files, sysfs values and QMP answers."""

from __future__ import annotations

from typing import Any

from segue.qemu.cpu_model import canonical_feature

# Boolean properties of a QEMU CPU model that are settings, not CPU features.
NON_FEATURE_PROPS = frozenset({
    "check", "enforce", "migratable", "pmu", "l3-cache", "full-cpuid-auto-level",
    "host-phys-bits", "host-cache-info", "fill-mtrr-mask", "cpuid-0xb", "x-intel-pt-auto-level",
    "kvm-no-smi-migration", "tcg-cpuid", "vmware-cpuid-freq", "legacy-cache", "lmce",
    "start-powered-off", "x-force-features", "x-migrate-smi-count", "kvm", "hotplugged",
    "realized", "hotpluggable", "kvm-pv-enforce-cpuid", "x-hv-synic-kvm-only",
    "hv-passthrough", "hv-enforce-cpuid",
})


def parse_meminfo(text: str) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in MiB from /proc/meminfo; raises ValueError if absent."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0])
    try:
        return values["MemTotal"] // 1024, values["MemAvailable"] // 1024
    except KeyError as err:
        raise ValueError(f"/proc/meminfo lacks {err.args[0]}") from err


def parse_cpu_model_name(cpuinfo: str) -> str:
    """The first 'model name' of /proc/cpuinfo, or 'unknown'."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def choose_accel(requested: str, kvm_device_usable: bool, modules: set[str]) -> tuple[str, str]:
    """Pick the accelerator: (accel, reason).

    KVM only where it can run a stock guest: /dev/kvm usable and a kvm_intel/kvm_amd module;
    a paravirtual KVM (kvm_pvm) cannot, so TCG is used there.
    """
    if requested == "tcg":
        return "tcg", "tcg requested in the agent configuration"
    stock_kvm = kvm_device_usable and bool({"kvm_intel", "kvm_amd"} & modules)
    if requested == "kvm":
        if not stock_kvm:
            return "tcg", "kvm requested but not usable here (no kvm_intel/kvm_amd); using tcg"
        return "kvm", "kvm requested and usable"
    if stock_kvm:
        return "kvm", "hardware KVM available (/dev/kvm with kvm_intel/kvm_amd)"
    if "kvm_pvm" in modules:
        return "tcg", "/dev/kvm is paravirtual KVM (kvm_pvm), which cannot run stock guests"
    return "tcg", "no usable /dev/kvm"


def features_from_expansion(expansion: dict[str, Any]) -> list[str]:
    """Enabled CPU features of a ``query-cpu-model-expansion`` answer, sorted."""
    props = expansion.get("model", {}).get("props", {})
    return sorted(
        name for name, value in props.items()
        if value is True and name not in NON_FEATURE_PROPS and not name.startswith("x-")
    )


def offered_features(features: list[str], exclude: list[str]) -> list[str]:
    """``features`` without the excluded ones (``lahf_lm`` and ``lahf-lm`` are one feature)."""
    gone = {canonical_feature(name) for name in exclude}
    return [f for f in features if canonical_feature(f) not in gone]


def machines_from_query(machines: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """(machine type names, alias -> versioned name) from ``query-machines``."""
    names = sorted(m["name"] for m in machines)
    aliases = {m["alias"]: m["name"] for m in machines if m.get("alias")}
    return names, aliases


def parse_link_speed(text: str) -> int | None:
    """Link speed in Mbit/s from /sys/class/net/<if>/speed; None if unknown (-1 or empty)."""
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value > 0 else None
