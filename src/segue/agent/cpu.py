"""The CPU a running VM really has: its QEMU is asked, not the spec.

The ``-cpu`` value the VM's QEMU was started with (read from its command line, so an adopted
VM started under another configuration is answered truthfully) is split into model name and
properties and given to that QEMU's ``query-cpu-model-expansion`` (type ``full``); the
enabled boolean features of the answer are the ones the guest sees.

Errors: ``NotFound`` (``VM_NOT_FOUND``), ``Conflict`` (``VM_NOT_RUNNING``) without a live
QEMU, ``Unavailable`` (``QMP_COMMAND_FAILED``, ``QMP_UNAVAILABLE``) from QEMU.
"""

from __future__ import annotations

from segue.agent.facts_parse import features_from_expansion
from segue.agent.vms import VMManager
from segue.api.agent import VMCpu
from segue.domain.errors import Conflict
from segue.qemu import process
from segue.qemu.cpu_model import parse_cpu_model


async def vm_cpu(manager: VMManager, name: str) -> VMCpu:
    """The ``-cpu`` value QEMU runs with and the features it enables, sorted."""
    vm = manager.get(name)
    launched = process.cmdline_option(vm.pid, "-cpu") if vm.pid is not None else None
    if vm.qmp is None or not vm.qmp.connected or launched is None:
        raise Conflict("VM_NOT_RUNNING", f"{name} is not running on {manager.config.host}",
                       "start it first: only a running QEMU can say what CPU it exposes",
                       state=vm.state.value)
    model = parse_cpu_model(launched)
    # the raw expansion is read at once by the pure parser shared with the host facts
    expansion = await vm.qmp.execute("query-cpu-model-expansion", {
        "type": "full", "model": {"name": model.name, "props": model.props}})
    return VMCpu(model=launched, features=features_from_expansion(expansion))
