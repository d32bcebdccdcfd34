"""User-defined policies (``segue.security.policies``): each kind, allowed and refused, as
tables of requests; and the decision's error."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from segue.security.errors import PolicyDenied
from segue.security.policies import (
    EncryptionRequired,
    MigrationFreeze,
    Placement,
    Policy,
    PolicyActor,
    PolicyRequest,
    RoleTags,
    Window,
    evaluate,
    require_allowed,
)

MONDAY_10 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday
MONDAY_20 = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)
SATURDAY_10 = datetime(2026, 3, 7, 10, 0, tzinfo=UTC)
TUESDAY_03 = datetime(2026, 3, 3, 3, 0, tzinfo=UTC)


def req(action: str = "migrate", vm_tags: tuple[str, ...] = (), host: str | None = "h2",
        host_tags: tuple[str, ...] = (), at: datetime = MONDAY_10,
        actor: PolicyActor | None = None, encrypted: bool = True,
        initiator: str = "user", vm: str = "web1") -> PolicyRequest:
    return PolicyRequest(action=action, vm=vm, at=at, vm_tags=frozenset(vm_tags), host=host,
                         host_tags=frozenset(host_tags), actor=actor, encrypted=encrypted,
                         initiator=initiator)


def denied_by(policy: Policy, request: PolicyRequest) -> bool:
    denials = evaluate([policy], request)
    assert all(d.code == "POLICY_DENIED" and d.policy == policy.name for d in denials)
    assert all(d.message and d.hint for d in denials)
    return bool(denials)


PCI = Placement("pci-hosts", "pci", "pci")
PLACEMENT_CASES = [
    ("tagged VM to an untagged host", req(vm_tags=("pci",)), True),
    ("tagged VM to a tagged host", req(vm_tags=("pci",), host_tags=("pci",)), False),
    ("untagged VM anywhere", req(host_tags=()), False),
    ("other tag", req(vm_tags=("web",)), False),
    ("start on an untagged host", req("start", vm_tags=("pci",)), True),
    ("create on an untagged host", req("create", vm_tags=("pci",)), True),
    ("create on a tagged host", req("create", vm_tags=("pci",), host_tags=("pci",)), False),
    ("stop is not placement", req("stop", vm_tags=("pci",), host=None), False),
    ("automated move too", req(vm_tags=("pci",), initiator="drs"), True),
]


@pytest.mark.parametrize(("case", "request_", "refused"), PLACEMENT_CASES,
                         ids=[c[0] for c in PLACEMENT_CASES])
def test_placement(case: str, request_: PolicyRequest, refused: bool) -> None:
    assert denied_by(PCI, request_) is refused


def test_placement_with_another_host_tag_names_it_in_the_hint() -> None:
    policy = Placement("gpu", "gpu-vm", "gpu-host")
    assert not denied_by(policy, req(vm_tags=("gpu-vm",), host_tags=("gpu-host",)))
    [denial] = evaluate([policy], req(vm_tags=("gpu-vm",), host_tags=("gpu-vm",)))
    assert "segue host tag h2 gpu-host" in denial.hint and denial.facts["host"] == "h2"


SECRET = EncryptionRequired("secret-tls", "secret")
ENCRYPTION_CASES = [
    ("unencrypted migration of a tagged VM", req(vm_tags=("secret",), encrypted=False), True),
    ("encrypted migration of a tagged VM", req(vm_tags=("secret",)), False),
    ("unencrypted migration of an untagged VM", req(encrypted=False), False),
    ("start is not a migration", req("start", vm_tags=("secret",), encrypted=False), False),
    ("automated, unencrypted", req(vm_tags=("secret",), encrypted=False, initiator="ha"), True),
]


@pytest.mark.parametrize(("case", "request_", "refused"), ENCRYPTION_CASES,
                         ids=[c[0] for c in ENCRYPTION_CASES])
def test_encryption_required(case: str, request_: PolicyRequest, refused: bool) -> None:
    assert denied_by(SECRET, request_) is refused


WEEKDAYS_9_TO_17 = Window(frozenset(range(5)), 9 * 60, 17 * 60)
FREEZE = MigrationFreeze("db-freeze", WEEKDAYS_9_TO_17, tag="db", vms=frozenset({"ledger"}))
FREEZE_USERS = MigrationFreeze("db-freeze-all", WEEKDAYS_9_TO_17, tag="db",
                               initiators=frozenset({"user", "drs"}))
NIGHTLY = MigrationFreeze("nightly", Window(frozenset({0}), 22 * 60, 6 * 60), tag="db")
PARIS = MigrationFreeze("paris", Window(frozenset(range(7)), 9 * 60, 10 * 60, "Europe/Paris"),
                        tag="db")
WINDOW_CASES = [
    ("maintenance in the window", FREEZE, req(vm_tags=("db",), initiator="maintenance"), True),
    ("drs in the window", FREEZE, req(vm_tags=("db",), initiator="drs"), True),
    ("ha in the window", FREEZE, req(vm_tags=("db",), initiator="ha"), True),
    ("a user in the window", FREEZE, req(vm_tags=("db",)), False),
    ("named VM without the tag", FREEZE, req(vm="ledger", initiator="drs"), True),
    ("other VM", FREEZE, req(vm_tags=("web",), initiator="drs"), False),
    ("after hours", FREEZE, req(vm_tags=("db",), at=MONDAY_20, initiator="drs"), False),
    ("weekend", FREEZE, req(vm_tags=("db",), at=SATURDAY_10, initiator="drs"), False),
    ("start is not a move", FREEZE, req("start", vm_tags=("db",), initiator="drs"), False),
    ("users listed", FREEZE_USERS, req(vm_tags=("db",)), True),
    ("users listed, ha not", FREEZE_USERS, req(vm_tags=("db",), initiator="ha"), False),
    ("past midnight, same evening", NIGHTLY,
     req(vm_tags=("db",), at=MONDAY_20.replace(hour=23), initiator="drs"), True),
    ("past midnight, next morning", NIGHTLY,
     req(vm_tags=("db",), at=TUESDAY_03, initiator="drs"), True),
    ("past midnight, Monday morning is not Sunday night", NIGHTLY,
     req(vm_tags=("db",), at=MONDAY_10.replace(hour=3), initiator="drs"), False),
    ("Paris 9-10 is 08-09 UTC in winter", PARIS,
     req(vm_tags=("db",), at=MONDAY_10.replace(hour=8, minute=30), initiator="drs"), True),
    ("Paris 9-10 is not 09:30 UTC in winter", PARIS,
     req(vm_tags=("db",), at=MONDAY_10.replace(minute=30), initiator="drs"), False),
]


@pytest.mark.parametrize(("case", "policy", "request_", "refused"), WINDOW_CASES,
                         ids=[c[0] for c in WINDOW_CASES])
def test_migration_window(case: str, policy: MigrationFreeze, request_: PolicyRequest,
                          refused: bool) -> None:
    assert denied_by(policy, request_) is refused


OWN_TAGS = RoleTags("operators-own-tags", "operator", frozenset({"start", "stop", "migrate"}))
ALICE = PolicyActor("alice", "operator", frozenset({"web", "cache"}))
BOB_ADMIN = PolicyActor("bob", "admin", frozenset())
CAROL = PolicyActor("carol", "operator", frozenset())
ROLE_CASES = [
    ("operator, VM of the user's tag", req(vm_tags=("web",), actor=ALICE), False),
    ("operator, VM of another of the user's tags", req(vm_tags=("x", "cache"), actor=ALICE),
     False),
    ("operator, VM of another tag", req(vm_tags=("db",), actor=ALICE), True),
    ("operator, untagged VM", req(actor=ALICE), True),
    ("operator stops another tag's VM", req("stop", vm_tags=("db",), host=None, actor=ALICE),
     True),
    ("operator starts another tag's VM", req("start", vm_tags=("db",), actor=ALICE), True),
    ("operator without tags", req(vm_tags=("web",), actor=CAROL), True),
    ("action not listed", req("create", vm_tags=("db",), actor=ALICE), False),
    ("another role", req(vm_tags=("db",), actor=BOB_ADMIN), False),
    ("no user (root, automation)", req(vm_tags=("db",), initiator="drs"), False),
]


@pytest.mark.parametrize(("case", "request_", "refused"), ROLE_CASES,
                         ids=[c[0] for c in ROLE_CASES])
def test_role_tags(case: str, request_: PolicyRequest, refused: bool) -> None:
    assert denied_by(OWN_TAGS, request_) is refused


def test_every_refusing_policy_is_reported_and_raised_together() -> None:
    request = req(vm_tags=("pci", "secret", "db"), encrypted=False, initiator="drs")
    denials = evaluate([PCI, SECRET, FREEZE, OWN_TAGS], request)
    assert [d.policy for d in denials] == ["pci-hosts", "secret-tls", "db-freeze"]
    with pytest.raises(PolicyDenied) as caught:
        require_allowed(denials, request)
    err = caught.value
    assert err.code == "POLICY_DENIED" and err.kind == "forbidden"
    assert "pci-hosts" in err.message and "2 more" in err.message
    assert [d["policy"] for d in err.details["denials"]] == ["pci-hosts", "secret-tls",
                                                              "db-freeze"]
    require_allowed(evaluate([PCI, SECRET], req()), req())  # nothing to refuse
