"""Inventory service functions over an in-memory SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from segue.api.inventory import VMReport
from segue.api.vm import VMSpecBody
from segue.checks.context import host_facts_from_dict
from segue.controller import inventory
from segue.controller.db import Database
from segue.controller.models import VMEvent
from segue.domain.errors import Conflict, NotFound
from segue.domain.host import HostFacts
from segue.domain.vm import VMState

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
FACTS = {"migration": {"addresses": ["fe80::1", "10.0.0.11"]}, "cpu": {"logical_cpus": 4}}


def facts(data: dict[str, Any] | None = None) -> HostFacts:
    """Host facts with only the given parts (the rest empty)."""
    return host_facts_from_dict("h", data or {})


@pytest.fixture
def session() -> Iterator[Session]:
    db = Database("sqlite://")
    db.upgrade()
    with Session(db.engine) as s:  # never committed: each test starts from an empty DB
        yield s
    db.dispose()


def vm_info(name: str, state: str = "running", pid: int | None = 100) -> VMReport:
    return VMReport(name=name, state=VMState(state), pid=pid, uuid=f"uuid-{name}",
                    spec=VMSpecBody(name=name, datastore="shared", memory_mib=64))


@pytest.mark.parametrize(("facts", "address"), [
    (FACTS, "10.0.0.11"),
    ({"migration": {"addresses": ["10.1.0.2/24", "10.1.0.3"]}}, "10.1.0.2"),
    ({"migration": {"addresses": ["fe80::1", "junk"]}}, None),
    ({"migration": {"interface": None, "addresses": []}}, None),
    ({}, None),
])
def test_migration_address_is_the_first_ipv4(facts: dict[str, Any], address: str | None) -> None:
    assert inventory.migration_address(host_facts_from_dict("h", facts)) == address


def test_heartbeat_upserts_the_host(session: Session) -> None:
    host = inventory.record_heartbeat(session, "h1", "http://h1:7600", facts(FACTS), [], T0)
    assert host.state == "connected" and host.created_at == T0
    assert host.migration_address == "10.0.0.11"
    later = T0 + timedelta(seconds=5)
    again = inventory.record_heartbeat(session, "h1", "http://h1:7601", facts(), [], later)
    assert again.id == host.id and again.url == "http://h1:7601"
    assert again.last_heartbeat == later and again.created_at == T0
    assert again.migration_address is None


def test_connected_and_stale(session: Session) -> None:
    host = inventory.record_heartbeat(session, "h1", "u", facts(), [], T0)
    assert inventory.host_connected(host, T0 + timedelta(seconds=10), 10)
    assert not inventory.host_connected(host, T0 + timedelta(seconds=11), 10)
    assert inventory.mark_stale_hosts(session, T0 + timedelta(seconds=5), 10) == []
    assert inventory.mark_stale_hosts(session, T0 + timedelta(seconds=11), 10) == ["h1"]
    assert host.state == "disconnected"
    assert not inventory.host_connected(host, T0, 10)  # disconnected until the next heartbeat
    assert inventory.mark_stale_hosts(session, T0 + timedelta(seconds=20), 10) == []


def test_get_host_hint_lists_hosts(session: Session) -> None:
    for name in ("h2", "h1"):
        inventory.record_heartbeat(session, name, "u", facts(), [], T0)
    with pytest.raises(NotFound) as caught:
        inventory.get_host(session, "h3")
    assert caught.value.code == "HOST_NOT_FOUND" and "h1, h2" in caught.value.hint


def test_heartbeat_reconciles_vms(session: Session) -> None:
    h1 = inventory.record_heartbeat(session, "h1", "u1", facts(), [], T0)
    inventory.record_heartbeat(session, "h2", "u2", facts(), [], T0)
    inventory.add_vm(session, vm_info("a"), h1, T0)
    inventory.add_vm(session, vm_info("b"), h1, T0)
    # h1 reports a paused, b gone, c new; h2 reports an incoming copy of a (not its own)
    inventory.record_heartbeat(session, "h1", "u1", facts(), [vm_info("a", "paused", 100),
                                                         vm_info("c")], T0)
    inventory.record_heartbeat(session, "h2", "u2", facts(), [vm_info("a", "inmigrate", 7)], T0)
    states = {vm.name: (vm.host, vm.state, vm.pid) for vm in inventory.list_vms(session)}
    assert states == {"a": ("h1", "paused", 100), "b": ("h1", "missing", None),
                      "c": ("h1", "running", 100)}
    kinds = [(e.vm_name, e.kind) for e in session.scalars(select(VMEvent).order_by(VMEvent.id))]
    assert kinds == [("a", "defined"), ("b", "defined"), ("a", "state"), ("c", "discovered"),
                     ("b", "state")]


def test_add_vm_refuses_duplicates_but_not_its_own_discovery(session: Session) -> None:
    h1 = inventory.record_heartbeat(session, "h1", "u", facts(), [vm_info("a")], T0)
    h2 = inventory.record_heartbeat(session, "h2", "u", facts(), [], T0)
    assert inventory.add_vm(session, vm_info("a"), h1).host == "h1"  # the heartbeat was first
    with pytest.raises(Conflict) as caught:
        inventory.add_vm(session, vm_info("a"), h2)
    assert caught.value.code == "VM_EXISTS"
    with pytest.raises(Conflict):
        inventory.refuse_existing_vm(session, "a")


def test_move_and_remove_are_events(session: Session) -> None:
    h1 = inventory.record_heartbeat(session, "h1", "u", facts(), [], T0)
    inventory.record_heartbeat(session, "h2", "u", facts(), [], T0)
    inventory.add_vm(session, vm_info("a"), h1, T0)
    moved = inventory.move_vm(session, "a", "h2", T0, generation=3)
    assert (moved.host, moved.generation) == ("h2", 3)  # the lease generation h2 holds it at
    with pytest.raises(NotFound):
        inventory.move_vm(session, "a", "h9")
    inventory.remove_vm(session, "a")
    with pytest.raises(NotFound) as caught:
        inventory.get_vm(session, "a")
    assert caught.value.code == "VM_NOT_FOUND"
    events = inventory.vm_events(session, "a")
    assert [e.kind for e in events] == ["defined", "moved", "destroyed"]
    assert events[1].detail == {"from": "h1", "to": "h2", "generation": 3}


def test_views(session: Session) -> None:
    host = inventory.record_heartbeat(session, "h1", "u", facts(FACTS), [vm_info("a")], T0)
    view = inventory.host_view(host, ["a"], T0 + timedelta(seconds=60), 10)
    assert view.state == "disconnected" and view.cpus == 4 and view.vms == ["a"]
    assert view.model_dump(mode="json")["last_heartbeat"] == "2025-01-01T12:00:00Z"
    inventory.set_migration_enabled(host, False)
    assert inventory.host_view(host, [], T0, 10).migration_enabled is False
    vm = inventory.get_vm(session, "a")
    assert inventory.vm_view(vm).spec == VMSpecBody(name="a", datastore="shared", memory_mib=64)


def test_naive_datetimes_are_refused(session: Session) -> None:
    with pytest.raises(Exception, match="naive datetime"):
        inventory.record_heartbeat(session, "h1", "u", facts(), [], datetime(2025, 1, 1))
