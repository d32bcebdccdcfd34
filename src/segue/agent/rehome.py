"""Re-homing a stopped VM: its definition moves from one host to another without a QEMU.

A stopped VM lives in files: its spec in the host's state dir and, with the host that owns
it, in its home datastore's ``vm.json`` (``segue.agent.vmstore``). Maintenance mode moves
it to another host in two calls, destination first:

1. ``adopt(name, from_host)`` on the destination: the datastore's ``vm.json`` must name
   ``from_host`` (or this host: a repeated call), no host may hold the VM's lease (it runs
   nowhere), and the VM must pass this host's admission checks (its files within this
   host's roots and present, its CPU model, its port groups, names and MACs unique); then
   this host stores the spec and ``vm.json`` names it, adopted from ``from_host``. From here
   on ``from_host`` can no longer start the VM (``VMManager.start`` refuses a VM re-homed
   away, ``VM_REHOMED``), so no two hosts ever run it.
2. ``release_definition(name)`` on the old host: the VM must be stopped here and its
   ``vm.json`` must name another host; this host forgets its own copy (runtime dir and
   spec), never the datastore's files. An agent that was not reachable then drops such a
   copy when it next starts (``stale_definitions``).

Errors: ``NotFound`` (``VM_NOT_FOUND``, ``VM_DEFINITION_NOT_FOUND``), ``Conflict``
(``VM_EXISTS``, ``VM_NOT_STOPPED``, ``VM_LOCKED``, ``VM_DEFINITION_ELSEWHERE``,
``VM_NOT_HANDED_OVER``), ``InvalidRequest`` (``REHOME_SAME_HOST``), and the admission and
confinement errors of ``define``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace

from segue.agent import admission
from segue.agent.guards import OWNED, requires
from segue.agent.managed import ManagedVM
from segue.agent.vms import VMManager
from segue.agent.vmstore import VM_FILE, DatastoreEntry, datastore_entry
from segue.api.vm import VMInfo
from segue.domain.errors import Conflict, InvalidRequest, NotFound
from segue.domain.vm import VMState
from segue.qemu.argv import RuntimePaths

log = logging.getLogger(__name__)


class Rehoming:
    """Adopt and release stopped VMs' definitions (see the module doc)."""

    def __init__(self, manager: VMManager) -> None:
        self.m = manager

    def get(self, name: str) -> ManagedVM:
        return self.m.get(name)

    def _entry(self, name: str, datastore: str) -> DatastoreEntry:
        root = self.m.config.datastores.get(datastore)
        if root is None:
            raise NotFound("VM_DEFINITION_NOT_FOUND",
                           f"{self.m.config.host} does not mount datastore {datastore}",
                           "re-home the VM to a host that mounts its home datastore")
        path = root / name / VM_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise NotFound("VM_DEFINITION_NOT_FOUND",
                           f"{name} has no readable definition at {path} ({err})",
                           "check the datastore, or define the VM again") from err
        return datastore_entry(data, path)

    async def adopt(self, name: str, datastore: str, from_host: str) -> VMInfo:
        """Take up the stopped VM's definition from ``from_host`` (step 1 of the module
        doc); the VM as this host now has it (stopped)."""
        host = self.m.config.host
        if from_host == host:
            raise InvalidRequest("REHOME_SAME_HOST", f"{name} is on {host} already",
                                 "name another host to take it from")
        entry = await asyncio.to_thread(self._entry, name, datastore)
        if entry.host == host and name in self.m.vms \
                and self.m.vms[name].spec.uuid == entry.spec.uuid:
            return await self.m.info(name)  # done before: the same answer
        if name in self.m.vms:
            raise Conflict("VM_EXISTS", f"a VM named {name} is already defined on {host}",
                           "destroy that one first, or re-home to another host")
        if entry.host not in (from_host, host):
            raise Conflict("VM_DEFINITION_ELSEWHERE",
                           f"{name}'s definition names host {entry.host}, not {from_host}",
                           "refresh the inventory and re-home it from the host it names")
        lease = await asyncio.to_thread(self.m.leases.read, entry.spec)
        if lease is not None and lease.held(time.time()):
            raise Conflict("VM_LOCKED", f"{name} runs on {lease.host} (it holds its lease)",
                           "stop it first, or migrate it live")
        spec = entry.spec
        paths = self.m.file_paths(spec)
        view = self.m.host_view(list(paths.values()))
        view = replace(view, datastore_vms={n: v for n, v in view.datastore_vms.items()
                                            if n != name})
        admission.check_unique(spec, view)
        admission.check_references(spec, view, paths)
        admission.check_cpu(spec, view)
        await asyncio.to_thread(self.m.store.save, spec, from_host)
        self.m.vms[name] = ManagedVM(spec=spec,
                                     runtime=RuntimePaths(self.m.store.runtime_dir(name)))
        log.info("adopted the definition of %s from %s", name, from_host)
        return await self.m.info(name)

    @requires(roles=OWNED, states={VMState.STOPPED}, code="VM_NOT_STOPPED", wanted="stopped",
              hint="stop it first, or migrate it live")
    async def release_definition(self, vm: ManagedVM) -> None:
        """Forget this host's copy of a stopped VM another host adopted (step 2 of the
        module doc)."""
        if self.m.owns_datastore_entry(vm.spec):
            raise Conflict("VM_NOT_HANDED_OVER",
                           f"{vm.name}'s definition still names {self.m.config.host}",
                           "adopt it on the new host first")
        self.m.forget(vm)
        log.info("released the definition of %s: another host has it", vm.name)
