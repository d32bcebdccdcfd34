"""Tags and the policy set in the controller's database: functions of a session, run through
``Database.run`` (each returns wire models or plain values, never rows).

Tags belong to a known VM, host or user (``NotFound`` ``VM_NOT_FOUND``,
``HOST_NOT_FOUND``, ``USER_NOT_FOUND`` otherwise); ``drop_tags`` forgets an object's tags
when it goes. ``replace_policies`` replaces the whole set in one transaction: the caller
has checked it (``segue.security.policy_file.check_entries``), so a bad set changes
nothing. ``decision_inputs`` reads what one decision needs in one transaction.

Errors: those above, and ``InvalidRequest`` (``TAG_INVALID``) for a tag both added and
removed in one change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from segue.api.policies import PolicySetView, PolicyView, TagsView
from segue.controller import inventory, users
from segue.controller.policy_models import PolicyRow, Tag
from segue.domain.errors import InvalidRequest
from segue.security.policies import Policy
from segue.security.policy_file import check_entries, to_entry

VM, HOST, USER = "vm", "host", "user"


@dataclass(frozen=True)
class DecisionInputs:
    """What a policy decision reads: the set in force and the tags involved."""

    policies: list[Policy]
    vm_tags: frozenset[str]
    host_tags: dict[str, frozenset[str]]
    user_tags: frozenset[str]


def tags_of(session: Session, kind: str, names: Iterable[str] | None = None
            ) -> dict[str, list[str]]:
    """The tags of every object of ``kind`` (of ``names`` only, if given), sorted; an
    object without tags is absent."""
    query = select(Tag).where(Tag.kind == kind).order_by(Tag.name, Tag.tag)
    if names is not None:
        query = query.where(Tag.name.in_(list(names)))
    out: dict[str, list[str]] = {}
    for row in session.scalars(query):
        out.setdefault(row.name, []).append(row.tag)
    return out


def change_tags(session: Session, kind: str, name: str, add: Iterable[str],
                remove: Iterable[str]) -> TagsView:
    """Add ``add`` to and remove ``remove`` from the tags of a VM or host (known, else
    NotFound); adding a tag it has, or removing one it lacks, changes nothing."""
    add, remove = set(add), set(remove)
    if both := sorted(add & remove):
        raise InvalidRequest("TAG_INVALID", f"tag {both[0]} is both added and removed",
                             "add it or remove it, not both", field="add")
    _require(session, kind, name)
    have = set(tags_of(session, kind, [name]).get(name, []))
    session.add_all(Tag(kind=kind, name=name, tag=t) for t in sorted(add - have))
    if remove:
        session.execute(delete(Tag).where(Tag.kind == kind, Tag.name == name,
                                          Tag.tag.in_(sorted(remove))))
    session.flush()
    return _view(session, kind, name)


def set_tags(session: Session, kind: str, name: str, tags: Iterable[str]) -> TagsView:
    """Replace the tags of a known object (NotFound otherwise)."""
    _require(session, kind, name)
    session.execute(delete(Tag).where(Tag.kind == kind, Tag.name == name))
    session.add_all(Tag(kind=kind, name=name, tag=t) for t in sorted(set(tags)))
    session.flush()
    return _view(session, kind, name)


def get_tags(session: Session, kind: str, name: str) -> TagsView:
    _require(session, kind, name)
    return _view(session, kind, name)


def drop_tags(session: Session, kind: str, name: str) -> None:
    """Forget the tags of an object that goes (a VM destroyed, a user deleted)."""
    session.execute(delete(Tag).where(Tag.kind == kind, Tag.name == name))


def replace_policies(session: Session, policies: list[Policy], now: datetime,
                     by: str) -> PolicySetView:
    """Make ``policies`` (checked) the whole set, in one transaction."""
    session.execute(delete(PolicyRow))
    session.add_all(PolicyRow(name=p.name, position=i, kind=p.kind, entry=to_entry(p),
                              applied_at=now, applied_by=by) for i, p in enumerate(policies))
    session.flush()
    return policy_set(session)


def policy_set(session: Session) -> PolicySetView:
    rows = _rows(session)
    return PolicySetView(applied_at=rows[0].applied_at if rows else None,
                         applied_by=rows[0].applied_by if rows else None,
                         policies=[PolicyView(name=r.name, kind=r.kind, entry=r.entry)
                                   for r in rows])


def load_policies(session: Session) -> list[Policy]:
    """The set in force (stored entries were checked when applied, and are read back with
    the same check)."""
    return check_entries([r.entry for r in _rows(session)])


def decision_inputs(session: Session, vm: str, hosts: Iterable[str],
                    user: str | None) -> DecisionInputs:
    hosts = list(hosts)
    host_tags = tags_of(session, HOST, hosts)
    return DecisionInputs(
        policies=load_policies(session),
        vm_tags=frozenset(tags_of(session, VM, [vm]).get(vm, [])),
        host_tags={h: frozenset(host_tags.get(h, [])) for h in hosts},
        user_tags=frozenset(tags_of(session, USER, [user]).get(user, []))
        if user is not None else frozenset())


def _rows(session: Session) -> list[PolicyRow]:
    return list(session.scalars(select(PolicyRow).order_by(PolicyRow.position)))


def _require(session: Session, kind: str, name: str) -> None:
    if kind == VM:
        inventory.get_vm(session, name)
    elif kind == HOST:
        inventory.get_host(session, name)
    else:
        users.user_role(session, name)


def _view(session: Session, kind: str, name: str) -> TagsView:
    return TagsView(kind=kind, name=name, tags=tags_of(session, kind, [name]).get(name, []))
