"""Where VM definitions live on disk.

A host keeps each VM it owns in ``<state_dir>/vms/<name>/spec.json`` beside its runtime
files (pidfile, QMP socket, logs). The same spec is written to the VM's home datastore as
``<datastore>/<name>/vm.json`` with the owning host, so any host mounting the datastore
can see (and later start) it; this is also how names and MACs are kept unique across hosts
that share a datastore.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from segue.domain.errors import InvalidRequest
from segue.domain.vm import VMSpec, vm_spec_from_dict
from segue.files import write_json_atomic

VM_FILE = "vm.json"
REHOMED_FROM = "rehomed_from"  # vm.json: the host a re-homing took the VM from


@dataclass(frozen=True)
class DatastoreEntry:
    """A VM spec found on a datastore, with the host that defined it."""

    spec: VMSpec
    host: str
    path: Path


class VMStore:
    """Definition files of the VMs of one host."""

    def __init__(self, host: str, vms_dir: Path, datastores: dict[str, Path]) -> None:
        self.host = host
        self.vms_dir = vms_dir
        self.datastores = datastores

    def runtime_dir(self, name: str) -> Path:
        return self.vms_dir / name

    def local_specs(self) -> list[VMSpec]:
        """Every VM this host owns, read from its state dir (corrupt or malformed files
        skipped)."""
        out = []
        for spec_file in sorted(self.vms_dir.glob("*/spec.json")):
            try:
                out.append(vm_spec_from_dict(json.loads(spec_file.read_text())))
            except (ValueError, OSError, InvalidRequest):
                continue
        return out

    def datastore_entries(self) -> Iterator[DatastoreEntry]:
        """Every VM spec on every datastore this host mounts (corrupt or malformed files
        skipped)."""
        for root in self.datastores.values():
            for vm_file in sorted(root.glob(f"*/{VM_FILE}")):
                try:
                    entry = datastore_entry(json.loads(vm_file.read_text()), vm_file)
                except (ValueError, OSError, InvalidRequest):
                    continue
                yield entry

    def save(self, spec: VMSpec, rehomed_from: str | None = None) -> None:
        """Write the spec locally and on its datastore (``rehomed_from``: adopted from that
        host); on failure neither stays written."""
        local = self.runtime_dir(spec.name) / "spec.json"
        shared = self.datastores[spec.datastore] / spec.name / VM_FILE
        created_shared_dir = not shared.parent.exists()
        try:
            write_json_atomic(local, spec.to_dict())
            entry: dict[str, object] = {"host": self.host, "spec": spec.to_dict()}
            if rehomed_from is not None:
                entry[REHOMED_FROM] = rehomed_from
            write_json_atomic(shared, entry)
        except OSError:
            shutil.rmtree(self.runtime_dir(spec.name), ignore_errors=True)
            shared.unlink(missing_ok=True)
            if created_shared_dir:
                shutil.rmtree(shared.parent, ignore_errors=True)
            raise

    def save_generation(self, spec: VMSpec, generation: int | None) -> None:
        """Name this host as the VM's in the datastore's vm.json, with the lease generation
        it claimed the VM at when it holds one (what the datastore says of the VM; the lease
        itself, ``segue.agent.leases``, is what decides)."""
        root = self.datastores.get(spec.datastore)
        if root is None:
            return
        entry: dict[str, object] = {"host": self.host, "spec": spec.to_dict()}
        if generation is not None:
            entry["generation"] = generation
        write_json_atomic(root / spec.name / VM_FILE, entry)

    def remove(self, spec: VMSpec) -> None:
        """Remove the definition everywhere (the datastore dir only if nothing else is in it)."""
        shutil.rmtree(self.runtime_dir(spec.name), ignore_errors=True)
        root = self.datastores.get(spec.datastore)
        if root is None:
            return
        shared = root / spec.name / VM_FILE
        shared.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # disks or other files stay: they are the user's
            shared.parent.rmdir()


def datastore_entry(data: object, path: Path) -> DatastoreEntry:
    """A datastore's ``vm.json`` (``{"host": ..., "generation": ..., "spec": {...}}``,
    generation only once claimed); raises InvalidRequest
    (``VM_SPEC_INVALID``) if it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("host"), str):
        raise InvalidRequest("VM_SPEC_INVALID", f"{path} names no owning host",
                             "it is not a file Segue wrote")
    return DatastoreEntry(vm_spec_from_dict(data.get("spec")), data["host"], path)
