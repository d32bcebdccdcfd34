"""Leases on shared storage: a VM runs on one host, and a writable disk serves one VM, even
when the controller is bypassed. The lease is the single truth of who runs a VM: starts,
resumes and migrations ask it, the controller mirrors it, and high availability restarts a
VM elsewhere only once its lease has expired.

Each datastore holds a ``.segue/leases`` directory with one JSON file per lease:

- ``vm-<uuid>.json`` on the VM's home datastore: VM ``uuid`` runs on ``host`` at
  ``generation``;
- ``disk-<digest>.json`` on a writable disk's own datastore (the digest of its path in the
  datastore): the disk serves VM ``uuid`` on ``host``.

A lease is *held* while it is not ``released`` and its ``expires_at`` (seconds since the
epoch) is ahead; the holder renews it every few seconds (``segue.agent.vms``) and an agent
that cannot renew stops the VM before it expires; where the agent itself is gone, the VM's
lease guardian (``segue.agent.guardian``, which reads this file) does. Hosts are expected
to agree on the time to well within a lease (NTP), as every lease-based fencing does.

The generation grows on every claim: a start on a host (``acquire``), a migration's
destination taking the VM over (``take_over``). It is the fencing token: a host acts on a
VM only at the generation it holds, so a host that lost the VM (its agent was away, another
host took it over) finds out at its next renewal and never resumes it.

A migration hands the lease over explicitly: the source, holding it, names the destination
and the migration (``hand_over``); the destination takes it over (``take_over``) before it
lets the guest run, and from then on the source's renewals fail and it must never run the
VM again (its QEMU is ``postmigrate``). A handover not taken is withdrawn by the source
(``ensure``) before it runs the VM again.

Every read-modify-write holds an exclusive ``flock`` on the directory's ``.lock`` (datastores
in sorted order when a VM's leases span several), which holds across hosts on NFSv4 and on a
cluster filesystem, and across the namespaces of one machine. QEMU's own image locking
(left on, ``segue.qemu.argv``) still guards each disk from a second writer underneath, even
while an agent is down.

Errors: ``Conflict`` ``VM_LOCKED`` (the VM's lease is held by another host), ``DISK_IN_USE``
(a disk's lease is held for another VM), ``VM_NOT_OWNED`` (this host does not hold the
VM's lease at the generation it acts on); ``Unavailable`` ``LEASE_STORAGE_UNAVAILABLE`` (a
datastore's lease directory cannot be read or written).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from segue.domain.errors import Conflict, Unavailable
from segue.domain.vm import VMSpec
from segue.files import write_json_atomic

LEASE_DIR = Path(".segue") / "leases"
DEFAULT_DURATION_S = 15.0
Kind = Literal["vm", "disk"]


@dataclass(frozen=True)
class Lease:
    """One lease file's content (see the module doc); ``path``: the disk's path in its
    datastore (disk leases only)."""

    kind: Kind
    vm: str
    uuid: str
    host: str
    generation: int
    expires_at: float
    released: bool = False
    handover_to: str | None = None
    handover_migration: str | None = None
    previous_host: str | None = None  # who held it before a takeover
    returned_to: str | None = None  # released unused: the previous holder may run it again
    path: str | None = None

    def held(self, now: float) -> bool:
        return not self.released and self.expires_at > now

    def describe(self, now: float) -> str:
        if self.released:
            return f"released by {self.host} at generation {self.generation}"
        left = self.expires_at - now
        when = f"expires in {left:.0f} s" if left > 0 else f"expired {-left:.0f} s ago"
        return f"held by {self.host} at generation {self.generation}, {when}"


@dataclass(frozen=True)
class _Slot:
    """Where one lease of a VM lives: its datastore's root and the file."""

    datastore: str
    root: Path
    file: Path
    kind: Kind
    path: str | None = None  # the disk's path in its datastore


class Leases:
    """The leases of this ``host`` on its ``datastores`` (name -> mount point)."""

    def __init__(self, host: str, datastores: Mapping[str, Path],
                 duration_s: float = DEFAULT_DURATION_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.datastores = dict(datastores)
        self.duration_s = duration_s
        self.clock = clock

    # ---- reading ----
    def read(self, spec: VMSpec) -> Lease | None:
        """The VM's lease as it stands (None: none was ever taken, or its datastore is not
        mounted here). Raises Unavailable (``LEASE_STORAGE_UNAVAILABLE``)."""
        slot = self._slots(spec)[0]
        return _read(slot)

    def vm_file(self, spec: VMSpec) -> Path:
        """The path of the VM's own lease file (what its guardian reads). Raises Unavailable
        (``LEASE_STORAGE_UNAVAILABLE``) if its datastore is not mounted here."""
        return self._slot(spec.datastore, "vm", f"vm-{spec.uuid}.json", None).file

    def holds(self, spec: VMSpec, generation: int | None) -> bool:
        """True if this host holds the VM's lease at ``generation`` (expired or not: nobody
        took it meanwhile)."""
        lease = self.read(spec)
        return (lease is not None and generation is not None and not lease.released
                and lease.host == self.host and lease.generation == generation)

    # ---- claiming ----
    def acquire(self, spec: VMSpec, expected: int | None = None) -> int:
        """Claim the VM for this host (a start): the VM's lease and its writable disks',
        all or none; the new generation. ``expected``: the generation the caller believes
        current (the controller's), refused if the lease moved on. Raises Conflict
        (``VM_LOCKED``, ``DISK_IN_USE``, ``VM_NOT_OWNED``)."""
        slots = self._slots(spec)
        now = self.clock()
        with self._locked(slots):
            current = _read(slots[0])
            self._check_claim(spec, slots, current, now, expected)
            generation = (current.generation if current else 0) + 1
            for slot in slots:
                self._write(slot, spec, generation, now)
        return generation

    def take_over(self, spec: VMSpec, migration_id: str) -> int:
        """The destination of migration ``migration_id`` takes the VM over (its source
        handed it over to this host); the new generation. Raises Conflict
        (``VM_NOT_OWNED``) when no such handover stands."""
        slots = self._slots(spec)
        now = self.clock()
        with self._locked(slots):
            current = _read(slots[0])
            if current is None or current.handover_to != self.host \
                    or current.handover_migration != migration_id or current.released:
                seen = current.describe(now) if current else "no lease"
                raise Conflict("VM_NOT_OWNED",
                               f"{spec.name} was not handed over to {self.host} by migration "
                               f"{migration_id} ({seen})",
                               "the source hands the VM over when the migration starts; "
                               "see its agent's log")
            generation = current.generation + 1
            for slot in slots:
                self._write(slot, spec, generation, now, previous=current.host)
        return generation

    # ---- holding ----
    def renew(self, spec: VMSpec, generation: int) -> None:
        """Push the VM's leases ``duration_s`` ahead. Raises Conflict (``VM_NOT_OWNED``)
        when this host no longer holds them at ``generation`` (taken over, or released and
        claimed elsewhere), Unavailable when the storage does not answer."""
        slots = self._slots(spec)
        now = self.clock()
        with self._locked(slots):
            current = self._own(spec, slots[0], generation, now)
            for slot in slots:
                self._write(slot, spec, generation, now, handover=current)

    def hand_over(self, spec: VMSpec, generation: int, to_host: str, migration_id: str) -> None:
        """Name the destination of a migration as the VM's next holder (this host keeps the
        lease until it takes over). Raises Conflict (``VM_NOT_OWNED``)."""
        slots = self._slots(spec)
        now = self.clock()
        with self._locked(slots):
            current = self._own(spec, slots[0], generation, now)
            handover = replace(current, handover_to=to_host, handover_migration=migration_id)
            for slot in slots:
                self._write(slot, spec, generation, now, handover=handover)

    def ensure(self, spec: VMSpec, generation: int | None) -> int:
        """Before this host runs the VM's memory again (a migration's rollback): keep the
        lease if it holds it at ``generation`` (a handover not taken is withdrawn); else
        claim it anew, but only if no other host ran the VM since (the lease is this host's
        own, released, or was returned unused by the destination that took it over); the
        generation. Raises Conflict (``VM_LOCKED`` while another host holds it,
        ``VM_NOT_OWNED`` when another host held it since: this memory is older than what
        that host ran)."""
        slots = self._slots(spec)
        now = self.clock()
        with self._locked(slots):
            current = _read(slots[0])
            if current is not None and generation is not None and not current.released \
                    and current.host == self.host and current.generation == generation:
                for slot in slots:
                    self._write(slot, spec, generation, now)  # without the handover
                return generation
            if current is not None and current.released and current.host != self.host \
                    and current.returned_to != self.host:
                raise Conflict("VM_NOT_OWNED",
                               f"{spec.name} ran on {current.host} at generation "
                               f"{current.generation} after this host's copy: this copy is "
                               "older", "never run it here; start the VM from its disk")
        return self.acquire(spec)

    def release(self, spec: VMSpec, generation: int | None, unused: bool = False) -> bool:
        """Give the VM's leases up (its QEMU is gone), if this host holds them at
        ``generation``; whether it did. ``unused``: the guest never ran here (a migration's
        destination that took the VM over but never resumed it): the host it was taken
        from may run its copy again. Never raises for a lease that is not this host's."""
        slots = self._slots(spec)
        now = self.clock()
        with self._locked(slots):
            current = _read(slots[0])
            if current is None or current.released or current.host != self.host \
                    or current.generation != generation:
                return False
            for slot in slots:
                lease = _read(slot)
                if lease is not None and lease.uuid == spec.uuid and lease.host == self.host:
                    _write_lease(slot, replace(
                        lease, released=True, expires_at=now, handover_to=None,
                        handover_migration=None,
                        returned_to=current.previous_host if unused else None))
        return True

    def forget(self, spec: VMSpec) -> None:
        """Remove the VM's lease files (its definition is gone): those of this host, or
        released; a lease another host holds stays."""
        slots = self._slots(spec)
        now = self.clock()
        with self._locked(slots):
            for slot in slots:
                lease = _read(slot)
                if lease is not None and lease.uuid == spec.uuid and (
                        lease.host == self.host or not lease.held(now)):
                    with contextlib.suppress(FileNotFoundError):
                        slot.file.unlink()

    # ---- inside ----
    def _check_claim(self, spec: VMSpec, slots: list[_Slot], current: Lease | None,
                     now: float, expected: int | None) -> None:
        if current is not None and current.held(now) and current.host != self.host:
            raise Conflict("VM_LOCKED",
                           f"{spec.name} runs on {current.host}: its lease is "
                           f"{current.describe(now)}",
                           f"stop it on {current.host} first; if {current.host} is down, its "
                           "lease expires on its own")
        if expected is not None and (current.generation if current else 0) != expected:
            have = current.generation if current else 0
            raise Conflict("VM_NOT_OWNED",
                           f"{spec.name}'s lease is at generation {have}, not {expected}",
                           "the VM moved meanwhile: refresh the inventory and try again")
        for slot in slots[1:]:
            lease = _read(slot)
            if lease is not None and lease.held(now) and lease.uuid != spec.uuid:
                raise Conflict("DISK_IN_USE",
                               f"disk {slot.datastore}:{slot.path} of {spec.name} is in use by "
                               f"VM {lease.vm} on {lease.host}",
                               "give the VM a disk of its own (two VMs writing one disk "
                               "corrupt it)")

    def _own(self, spec: VMSpec, slot: _Slot, generation: int, now: float) -> Lease:
        current = _read(slot)
        if current is None or current.released or current.host != self.host \
                or current.generation != generation:
            seen = current.describe(now) if current else "no lease"
            raise Conflict("VM_NOT_OWNED",
                           f"{self.host} does not hold {spec.name} at generation {generation} "
                           f"({seen})", "the VM is another host's now: never run it here")
        return current

    def _write(self, slot: _Slot, spec: VMSpec, generation: int, now: float,
               handover: Lease | None = None, previous: str | None = None) -> None:
        """Write one of the VM's leases held by this host; ``handover``: the lease whose
        handover (and previous holder) to keep; ``previous``: the host it was taken from."""
        _write_lease(slot, Lease(
            kind=slot.kind, vm=spec.name, uuid=spec.uuid, host=self.host,
            generation=generation, expires_at=now + self.duration_s, path=slot.path,
            handover_to=handover.handover_to if handover else None,
            handover_migration=handover.handover_migration if handover else None,
            previous_host=previous or (handover.previous_host if handover else None)))

    def _slots(self, spec: VMSpec) -> list[_Slot]:
        """The VM's lease first, then one per writable disk."""
        slots = [self._slot(spec.datastore, "vm", f"vm-{spec.uuid}.json", None)]
        for disk in spec.disks:
            if disk.readonly:
                continue  # a read-only disk may serve many VMs
            digest = hashlib.sha256(os.path.normpath(disk.path).encode()).hexdigest()[:24]
            slots.append(self._slot(disk.datastore, "disk", f"disk-{digest}.json",
                                    os.path.normpath(disk.path)))
        return slots

    def _slot(self, datastore: str, kind: Kind, name: str, path: str | None) -> _Slot:
        root = self.datastores.get(datastore)
        if root is None:
            raise Unavailable("LEASE_STORAGE_UNAVAILABLE",
                              f"datastore {datastore} is not mounted on {self.host}",
                              "mount it (agent configuration: datastores)")
        return _Slot(datastore, root, root / LEASE_DIR / name, kind, path)

    @contextlib.contextmanager
    def _locked(self, slots: list[_Slot]) -> Iterator[None]:
        """Exclusive flocks on the lease directories of ``slots``' datastores, in order."""
        with contextlib.ExitStack() as stack:
            for root in sorted({s.root for s in slots}):
                stack.enter_context(_flock(root / LEASE_DIR / ".lock"))
            yield


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise _unavailable(path, err) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _read(slot: _Slot) -> Lease | None:
    try:
        data = json.loads(slot.file.read_text())
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _unavailable(slot.file, err) from err
    except ValueError:
        return None  # a torn or foreign file holds nothing (writes are atomic renames)
    try:
        return Lease(**data)
    except TypeError:
        return None


def _write_lease(slot: _Slot, lease: Lease) -> None:
    try:
        write_json_atomic(slot.file, asdict(lease))
    except OSError as err:
        raise _unavailable(slot.file, err) from err


def _unavailable(path: Path, err: OSError) -> Unavailable:
    return Unavailable("LEASE_STORAGE_UNAVAILABLE",
                       f"the lease at {path} cannot be read or written: {err.strerror or err}",
                       "check that the datastore is mounted and writable on this host")
