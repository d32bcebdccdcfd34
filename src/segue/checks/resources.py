"""Resources check: the destination has the memory and logical CPUs for the VM.

Memory needed = the VM's memory + ``QEMU_OVERHEAD_MIB`` + what other migrations into the
destination hold (``MigrationContext.reserved_mib``); an error if the destination's available
memory is less, a warning if its memory use would go above ``HIGH_MEMORY_USE`` of its total.
"""

from __future__ import annotations

from segue.checks.context import MigrationContext
from segue.checks.result import CheckResult, error, passed, warning

QEMU_OVERHEAD_MIB = 128
HIGH_MEMORY_USE = 0.9


def memory_needed_mib(vm_memory_mib: int) -> int:
    """What one incoming VM holds on its destination."""
    return vm_memory_mib + QEMU_OVERHEAD_MIB


def _memory(ctx: MigrationContext) -> CheckResult | None:
    mem = ctx.dest.facts.memory
    need = memory_needed_mib(ctx.vm.memory_mib) + ctx.reserved_mib
    facts = {"needed_mib": need, "vm_mib": ctx.vm.memory_mib, "overhead_mib": QEMU_OVERHEAD_MIB,
             "reserved_mib": ctx.reserved_mib, "available_mib": mem.available_mib,
             "total_mib": mem.total_mib}
    if mem.available_mib < need:
        return error("resources", "INSUFFICIENT_MEMORY",
                     f"{ctx.dest.name} has {mem.available_mib} MiB available, {need} MiB needed "
                     f"({ctx.vm.memory_mib} VM + {QEMU_OVERHEAD_MIB} overhead + "
                     f"{ctx.reserved_mib} reserved by other migrations)",
                     "free memory there or choose another host", **facts)
    used_after = mem.total_mib - mem.available_mib + need
    if used_after > HIGH_MEMORY_USE * mem.total_mib:
        return warning("resources", "MEMORY_HIGH_AFTER_MOVE",
                       f"{ctx.dest.name} would use {used_after} of {mem.total_mib} MiB after the "
                       f"move (over {HIGH_MEMORY_USE:.0%})",
                       "consider a host with more free memory", used_after_mib=used_after,
                       **facts)
    return None


def _cpus(ctx: MigrationContext) -> CheckResult | None:
    cpus = ctx.dest.facts.cpu.logical_cpus
    if cpus < ctx.vm.vcpus:
        return error("resources", "INSUFFICIENT_CPUS",
                     f"{ctx.dest.name} has {cpus} logical CPU(s), {ctx.vm.name} has "
                     f"{ctx.vm.vcpus} vCPUs", "choose a host with more CPUs",
                     logical_cpus=cpus, vcpus=ctx.vm.vcpus)
    return None


def check_resources(ctx: MigrationContext) -> list[CheckResult]:
    """INSUFFICIENT_MEMORY, MEMORY_HIGH_AFTER_MOVE (warning), INSUFFICIENT_CPUS; else
    RESOURCES_OK."""
    problems = [p for p in (_memory(ctx), _cpus(ctx)) if p is not None]
    mem = ctx.dest.facts.memory
    return passed("resources", problems,
                  f"{ctx.dest.name} has {mem.available_mib} MiB available and "
                  f"{ctx.dest.facts.cpu.logical_cpus} logical CPUs",
                  needed_mib=memory_needed_mib(ctx.vm.memory_mib) + ctx.reserved_mib,
                  available_mib=mem.available_mib)
