"""CPU and VM compatibility checks.

``check_cpu``: the destination must offer every CPU feature the VM's QEMU exposes (names are
compared with ``_`` and ``-`` as one: QEMU accepts both spellings of ``lahf_lm``).
``check_compatibility``: the VM's machine type exists on the destination's QEMU (an alias such
as ``pc`` must mean the same versioned machine there) and the VM has nothing that cannot
migrate (a host-passthrough CPU model: ``host`` or ``max``).
"""

from __future__ import annotations

from collections.abc import Iterable

from segue.checks.context import MigrationContext
from segue.checks.result import CheckResult, error, passed

PASSTHROUGH_MODELS = frozenset({"host", "max"})  # the guest sees the host's own CPU


def canonical_feature(name: str) -> str:
    """One spelling per feature (``lahf_lm`` and ``lahf-lm`` are the same)."""
    return name.replace("_", "-")


def missing_features(wanted: Iterable[str], offered: Iterable[str]) -> list[str]:
    """The features of ``wanted`` that ``offered`` lacks, sorted."""
    have = {canonical_feature(f) for f in offered}
    return sorted({f for f in wanted if canonical_feature(f) not in have})


def check_cpu(ctx: MigrationContext) -> list[CheckResult]:
    """CPU_FEATURE_MISSING (listing them) or CPU_FEATURES_UNKNOWN, else CPU_OK."""
    dest = ctx.dest
    if ctx.vm_cpu_features is None:
        return [error("cpu", "CPU_FEATURES_UNKNOWN",
                      f"the CPU features of {ctx.vm.name} are unknown: its QEMU on "
                      f"{ctx.source.name} could not be asked",
                      "the VM must be running for its CPU to be compared", vm_state=ctx.vm_state)]
    missing = missing_features(ctx.vm_cpu_features, dest.facts.cpu.features)
    if missing:
        return [error("cpu", "CPU_FEATURE_MISSING",
                      f"{dest.name} does not offer {len(missing)} CPU feature(s) "
                      f"{ctx.vm.name} uses: {', '.join(missing)}",
                      "choose a host that offers them, or run the VM on the cluster baseline "
                      "(cpu_model \"baseline\"; see segue cluster baseline)",
                      missing=missing, vm_cpu_model=ctx.vm.cpu_model)]
    return passed("cpu", [], f"{dest.name} offers all {len(ctx.vm_cpu_features)} CPU features "
                  f"of {ctx.vm.name}", features=len(ctx.vm_cpu_features))


def _machine_problem(ctx: MigrationContext) -> CheckResult | None:
    machine = ctx.vm.machine
    src_q, dst_q = ctx.source.facts.qemu, ctx.dest.facts.qemu
    wanted = src_q.machine_aliases.get(machine, machine)  # what the VM really runs
    facts = {"machine": machine, "resolved": wanted, "dest_qemu": dst_q.version}
    if wanted not in dst_q.machines and wanted not in dst_q.machine_aliases:
        return error("compatibility", "MACHINE_TYPE_MISSING",
                     f"QEMU {dst_q.version or '?'} on {ctx.dest.name} has no machine type "
                     f"{wanted}", f"upgrade QEMU on {ctx.dest.name}, or choose another host",
                     **facts)
    there = dst_q.machine_aliases.get(machine, machine)
    if there != wanted:
        return error("compatibility", "MACHINE_TYPE_MISMATCH",
                     f"machine {machine} is {wanted} on {ctx.source.name} but {there} on "
                     f"{ctx.dest.name}", f"define the VM with the versioned machine {wanted}",
                     dest_resolved=there, **facts)
    return None


def check_compatibility(ctx: MigrationContext) -> list[CheckResult]:
    """MACHINE_TYPE_MISSING / MACHINE_TYPE_MISMATCH, CPU_HOST_PASSTHROUGH, else
    COMPATIBILITY_OK."""
    problems: list[CheckResult] = []
    machine = _machine_problem(ctx)
    if machine is not None:
        problems.append(machine)
    model = ctx.vm.cpu_model.split(",", 1)[0]
    if model in PASSTHROUGH_MODELS:
        problems.append(error(
            "compatibility", "CPU_HOST_PASSTHROUGH",
            f"{ctx.vm.name} runs with -cpu {model}: a host-passthrough CPU cannot migrate safely",
            "redefine the VM with cpu_model \"baseline\" (the cluster's CPU baseline)",
            cpu_model=ctx.vm.cpu_model))
    return passed("compatibility", problems, f"machine {ctx.vm.machine} is available on "
                  f"{ctx.dest.name}; every device can migrate", machine=ctx.vm.machine)
