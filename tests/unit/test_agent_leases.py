"""Leases on shared storage (``segue.agent.leases``): two hosts' lease stores on the same
datastore directories, a fake clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segue.agent.leases import LEASE_DIR, Leases
from segue.domain.errors import Conflict, Unavailable
from segue.domain.vm import DiskSpec, VMSpec

UUID1 = "11111111-1111-4111-8111-111111111111"
UUID2 = "22222222-2222-4222-8222-222222222222"


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def world(tmp_path: Path) -> tuple[Leases, Leases, Clock]:
    stores = {"shared": tmp_path / "shared", "other": tmp_path / "other"}
    for root in stores.values():
        root.mkdir()
    clock = Clock()
    return (Leases("host1", stores, 15.0, clock), Leases("host2", stores, 15.0, clock), clock)


def vm(name: str = "web1", uuid: str = UUID1, disks: tuple[str, ...] = ("web1/disk0.qcow2",),
       readonly: bool = False) -> VMSpec:
    return VMSpec(name=name, datastore="shared", uuid=uuid,
                  disks=[DiskSpec("other", d, readonly=readonly) for d in disks])


def code(err: pytest.ExceptionInfo[Exception]) -> str:
    assert isinstance(err.value, Conflict | Unavailable)
    return err.value.code


def test_a_vm_runs_on_one_host(world: tuple[Leases, Leases, Clock]) -> None:
    h1, h2, _ = world
    assert h1.acquire(vm()) == 1
    with pytest.raises(Conflict) as err:
        h2.acquire(vm())
    assert code(err) == "VM_LOCKED" and "host1" in str(err.value)
    assert h1.holds(vm(), 1) and not h2.holds(vm(), 1)


def test_a_disk_serves_one_vm(world: tuple[Leases, Leases, Clock]) -> None:
    h1, h2, _ = world
    h1.acquire(vm())
    with pytest.raises(Conflict) as err:  # another VM, same disk, another host
        h2.acquire(vm("evil", UUID2))
    assert code(err) == "DISK_IN_USE" and "web1" in str(err.value)
    with pytest.raises(Conflict) as err:  # ... or this host: still refused
        h1.acquire(vm("evil", UUID2))
    assert code(err) == "DISK_IN_USE"
    assert h2.read(vm("evil", UUID2)) is None  # nothing half-made


def test_read_only_disks_are_shared(world: tuple[Leases, Leases, Clock]) -> None:
    h1, h2, _ = world
    h1.acquire(vm(readonly=True))
    assert h2.acquire(vm("other", UUID2, readonly=True)) == 1


def test_an_expired_lease_can_be_claimed_and_the_old_holder_is_fenced(
        world: tuple[Leases, Leases, Clock]) -> None:
    h1, h2, clock = world
    h1.acquire(vm())
    clock.t += 14.0
    h1.renew(vm(), 1)  # renewed in time: still locked 14 s later
    clock.t += 14.0
    with pytest.raises(Conflict):
        h2.acquire(vm())
    clock.t += 2.0  # 16 s without renewal: expired
    assert h2.acquire(vm()) == 2
    with pytest.raises(Conflict) as err:  # host1 finds out at its next renewal
        h1.renew(vm(), 1)
    assert code(err) == "VM_NOT_OWNED"
    assert not h1.release(vm(), 1)  # and cannot release host2's lease
    assert h2.holds(vm(), 2)


def test_an_expired_lease_nobody_took_is_still_renewed_by_its_holder(
        world: tuple[Leases, Leases, Clock]) -> None:
    h1, _, clock = world
    h1.acquire(vm())
    clock.t += 60
    h1.renew(vm(), 1)
    assert h1.holds(vm(), 1)


def test_the_generation_grows_on_every_claim_and_guards_a_stale_caller(
        world: tuple[Leases, Leases, Clock]) -> None:
    h1, h2, _ = world
    assert h1.acquire(vm()) == 1
    assert h1.release(vm(), 1)
    assert h2.acquire(vm(), expected=1) == 2
    assert h2.release(vm(), 2)
    with pytest.raises(Conflict) as err:  # the caller thinks it is still at 1
        h1.acquire(vm(), expected=1)
    assert code(err) == "VM_NOT_OWNED" and "generation 2" in str(err.value)


def test_a_migration_hands_the_vm_over(world: tuple[Leases, Leases, Clock]) -> None:
    h1, h2, _ = world
    h1.acquire(vm())
    with pytest.raises(Conflict):  # no handover yet
        h2.take_over(vm(), "m1")
    h1.hand_over(vm(), 1, "host2", "m1")
    h1.renew(vm(), 1)  # the source keeps renewing while it copies: the handover stays
    with pytest.raises(Conflict):  # another migration's id
        h2.take_over(vm(), "m2")
    assert h2.take_over(vm(), "m1") == 2
    assert h2.holds(vm(), 2)
    for step in (lambda: h1.renew(vm(), 1), lambda: h1.ensure(vm(), 1)):
        with pytest.raises(Conflict) as err:  # the source never runs it again
            step()
        assert code(err) in ("VM_NOT_OWNED", "VM_LOCKED")
    disk = json.loads(next((h1.datastores["other"] / LEASE_DIR).glob("disk-*.json")).read_text())
    assert (disk["host"], disk["generation"], disk["path"]) == ("host2", 2, "web1/disk0.qcow2")


def test_a_handover_not_taken_is_withdrawn_when_the_source_runs_the_vm_again(
        world: tuple[Leases, Leases, Clock]) -> None:
    h1, h2, _ = world
    h1.acquire(vm())
    h1.hand_over(vm(), 1, "host2", "m1")
    assert h1.ensure(vm(), 1) == 1
    with pytest.raises(Conflict):
        h2.take_over(vm(), "m1")


def test_a_lease_returned_unused_lets_the_source_run_its_copy_again(
        world: tuple[Leases, Leases, Clock]) -> None:
    h1, h2, _ = world
    h1.acquire(vm())
    h1.hand_over(vm(), 1, "host2", "m1")
    assert h2.take_over(vm(), "m1") == 2
    assert h2.release(vm(), 2, unused=True)  # the destination never ran it and gave it back
    assert h1.ensure(vm(), 1) == 3


def test_a_destination_that_ran_the_vm_keeps_the_source_from_rewinding_it(
        world: tuple[Leases, Leases, Clock]) -> None:
    h1, h2, _ = world
    h1.acquire(vm())
    h1.hand_over(vm(), 1, "host2", "m1")
    assert h2.take_over(vm(), "m1") == 2
    assert h2.release(vm(), 2)  # it ran the guest, then its QEMU went
    with pytest.raises(Conflict) as err:
        h1.ensure(vm(), 1)
    assert code(err) == "VM_NOT_OWNED" and "older" in str(err.value)
    assert h1.acquire(vm()) == 3  # a start from the disk is another matter


def test_a_missing_datastore_is_unavailable(world: tuple[Leases, Leases, Clock]) -> None:
    h1, _, _ = world
    with pytest.raises(Unavailable) as err:
        h1.acquire(VMSpec(name="x", datastore="nowhere", uuid=UUID1))
    assert code(err) == "LEASE_STORAGE_UNAVAILABLE"


def test_an_unwritable_lease_directory_is_unavailable(
        world: tuple[Leases, Leases, Clock], tmp_path: Path) -> None:
    h1, _, _ = world
    (tmp_path / "shared" / ".segue").write_text("not a directory")
    with pytest.raises(Unavailable) as err:
        h1.acquire(vm(disks=()))
    assert code(err) == "LEASE_STORAGE_UNAVAILABLE"


@pytest.mark.parametrize(("duration", "renew", "after"), [
    (15.0, 3.0, 9.0),  # the defaults: two renewals short of the expiry
    (3.0, 0.2, 2.4),  # short renewals: at most 80 % of the lease
    (600.0, 120.0, 360.0),
])
def test_an_agent_stops_a_vm_well_before_its_lease_expires(
        duration: float, renew: float, after: float) -> None:
    from segue.agent.vms import fence_after

    assert fence_after(duration, renew) == pytest.approx(after)
    assert fence_after(duration, renew) < duration - renew
