"""User-defined policies: which actions on VMs the cluster refuses, decided by pure functions.

A policy set is a list of named policies (``segue.security.policy_file`` reads and checks
them). Four kinds:

- ``Placement`` (``placement``): VMs tagged ``tag`` run only on hosts tagged ``host_tag``
  (by default the same tag). Applies to where a VM is defined or started (``create``,
  ``start``) and to a migration's destination (``migrate``).
- ``EncryptionRequired`` (``encryption-required``): migrations of VMs tagged ``tag`` must be
  encrypted (the migration stream over TLS).
- ``MigrationFreeze`` (``migration-window``): during a weekly time window (days of the week
  and ``HH:MM-HH:MM`` in UTC or a named zone), VMs tagged ``tag`` or named in ``vms`` are
  not moved by the listed initiators (by default the automated ones: ``maintenance``,
  ``drs``, ``ha``; a user's own request only if ``user`` is listed).
- ``RoleTags`` (``role-tags``): users whose role is ``role`` may do ``actions`` only on VMs
  that carry one of the user's own tags. Decided by casbin with the scope ``tag:<tag>``
  of ``segue.security.roles``: each user gets the lines
  ``p, <role>@<user>, tag:<tag>, vm, <action>`` for its tags, and a request on a VM asks
  for the VM's tags' scopes.

``evaluate(policies, request)`` is the one decision: the ``Denial`` of every policy that
refuses ``request`` (empty: allowed). It does no I/O; the controller gathers the tags and
calls it for every action it enforces (``segue.controller.policy_gate``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

from segue.security.errors import POLICY_DENIED, PolicyDenied
from segue.security.roles import Authorizer, Permission

Action = Literal["create", "start", "stop", "migrate"]
ACTIONS: tuple[Action, ...] = ("create", "start", "stop", "migrate")
Initiator = Literal["user", "maintenance", "drs", "ha"]
INITIATORS: tuple[Initiator, ...] = ("user", "maintenance", "drs", "ha")
AUTOMATED: tuple[Initiator, ...] = ("maintenance", "drs", "ha")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
PLACED_ACTIONS = frozenset({"create", "start", "migrate"})
KIND_PLACEMENT = "placement"
KIND_ENCRYPTION = "encryption-required"
KIND_WINDOW = "migration-window"
KIND_ROLE_TAGS = "role-tags"
KINDS = (KIND_PLACEMENT, KIND_ENCRYPTION, KIND_WINDOW, KIND_ROLE_TAGS)


def tag_scope(tag: str) -> str:
    """The casbin scope of a tag's objects (``segue.security.roles``)."""
    return f"tag:{tag}"


@dataclass(frozen=True)
class Window:
    """A weekly time range: ``days`` (0 = Monday) from ``start`` to ``end`` (minutes after
    midnight; ``end`` may be 1440, the day's end; an ``end`` before ``start`` runs past
    midnight into the next day) in zone ``tz``."""

    days: frozenset[int]
    start: int
    end: int
    tz: str = "UTC"

    def contains(self, at: datetime) -> bool:
        """True if ``at`` (timezone-aware) falls in the window, read in its zone."""
        local = at.astimezone(ZoneInfo(self.tz))
        minute, day = local.hour * 60 + local.minute, local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        # past midnight: the window belongs to the day it started on
        return ((day in self.days and minute >= self.start)
                or ((day - 1) % 7 in self.days and minute < self.end))

    def describe(self) -> str:
        days = ",".join(DAYS[d] for d in sorted(self.days))
        return f"{days} {_hhmm(self.start)}-{_hhmm(self.end)} {self.tz}"


@dataclass(frozen=True)
class Placement:
    name: str
    tag: str
    host_tag: str
    kind: str = KIND_PLACEMENT


@dataclass(frozen=True)
class EncryptionRequired:
    name: str
    tag: str
    kind: str = KIND_ENCRYPTION


@dataclass(frozen=True)
class MigrationFreeze:
    name: str
    window: Window
    tag: str | None = None
    vms: frozenset[str] = frozenset()
    initiators: frozenset[str] = frozenset(AUTOMATED)
    kind: str = KIND_WINDOW


@dataclass(frozen=True)
class RoleTags:
    name: str
    role: str
    actions: frozenset[str] = frozenset({"start", "stop", "migrate"})
    kind: str = KIND_ROLE_TAGS


Policy = Placement | EncryptionRequired | MigrationFreeze | RoleTags


@dataclass(frozen=True)
class PolicyActor:
    """The user behind a request (its name, role, and its own tags)."""

    name: str
    role: str
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PolicyRequest:
    """An action on a VM: ``host`` is where it would run (a migration's destination, the
    host a VM is defined or started on; None for ``stop``). ``actor``: the user who asked
    (None: root, a host, or the controller's own automation). ``encrypted``: whether a
    migration's stream would be encrypted. ``initiator``: who moves the VM."""

    action: str
    vm: str
    at: datetime
    vm_tags: frozenset[str] = frozenset()
    host: str | None = None
    host_tags: frozenset[str] = frozenset()
    actor: PolicyActor | None = None
    encrypted: bool = True
    initiator: str = "user"


@dataclass(frozen=True)
class Denial:
    """One policy's refusal: ``code`` is always ``POLICY_DENIED``."""

    policy: str
    kind: str
    message: str
    hint: str
    facts: dict[str, Any] = field(default_factory=dict, hash=False)
    code: str = POLICY_DENIED

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "policy": self.policy, "kind": self.kind,
                "message": self.message, "hint": self.hint, "facts": self.facts}


def evaluate(policies: Iterable[Policy], request: PolicyRequest) -> list[Denial]:
    """Every denial of ``request`` by ``policies``, in the policies' order (empty: allowed)."""
    out: list[Denial] = []
    for policy in policies:
        denial = _decide(policy, request)
        if denial is not None:
            out.append(denial)
    return out


def require_allowed(denials: Sequence[Denial], request: PolicyRequest) -> None:
    """Raise PolicyDenied (``POLICY_DENIED``, every denial in ``details["denials"]``) if
    there is any."""
    if not denials:
        return
    first = denials[0]
    more = f" (and {len(denials) - 1} more policy refusal(s))" if len(denials) > 1 else ""
    raise PolicyDenied(POLICY_DENIED, f"policy {first.policy}: {first.message}{more}",
                       first.hint, action=request.action, vm=request.vm,
                       denials=[d.to_dict() for d in denials])


def _decide(policy: Policy, r: PolicyRequest) -> Denial | None:
    if isinstance(policy, Placement):
        return _placement(policy, r)
    if isinstance(policy, EncryptionRequired):
        return _encryption(policy, r)
    if isinstance(policy, MigrationFreeze):
        return _freeze(policy, r)
    return _role_tags(policy, r)


def _placement(p: Placement, r: PolicyRequest) -> Denial | None:
    if (r.action not in PLACED_ACTIONS or r.host is None or p.tag not in r.vm_tags
            or p.host_tag in r.host_tags):
        return None
    where = {"create": "be defined on", "start": "start on", "migrate": "migrate to"}
    return Denial(p.name, p.kind,
                  f"{r.vm} is tagged {p.tag} and may only run on hosts tagged {p.host_tag}; "
                  f"it may not {where[r.action]} {r.host}, which is not",
                  f"choose a host tagged {p.host_tag} (segue host list shows tags), or tag "
                  f"{r.host}: segue host tag {r.host} {p.host_tag}",
                  {"tag": p.tag, "host_tag": p.host_tag, "host": r.host,
                   "host_tags": sorted(r.host_tags)})


def _encryption(p: EncryptionRequired, r: PolicyRequest) -> Denial | None:
    if r.action != "migrate" or r.encrypted or p.tag not in r.vm_tags:
        return None
    return Denial(p.name, p.kind,
                  f"{r.vm} is tagged {p.tag}: its migrations must be encrypted, and this "
                  "one would not be", "migrate it with TLS (leave the migration's tls "
                  "option on)", {"tag": p.tag})


def _freeze(p: MigrationFreeze, r: PolicyRequest) -> Denial | None:
    named = r.vm in p.vms or (p.tag is not None and p.tag in r.vm_tags)
    if (r.action != "migrate" or not named or r.initiator not in p.initiators
            or not p.window.contains(r.at)):
        return None
    return Denial(p.name, p.kind,
                  f"{r.vm} is not moved by {r.initiator} during {p.window.describe()}",
                  "wait for the window to end"
                  + (", or ask a user to move it" if "user" not in p.initiators else ""),
                  {"window": p.window.describe(), "initiator": r.initiator,
                   "at": r.at.isoformat()})


def _role_tags(p: RoleTags, r: PolicyRequest) -> Denial | None:
    actor = r.actor
    if (actor is None or actor.role != p.role or r.action not in p.actions
            or _tags_allow(actor, r.action, r.vm_tags)):
        return None
    return Denial(p.name, p.kind,
                  f"user {actor.name} (role {p.role}) may {r.action} only VMs tagged with "
                  f"one of its tags ({', '.join(sorted(actor.tags)) or 'none'}); {r.vm} has "
                  f"{', '.join(sorted(r.vm_tags)) or 'no tags'}",
                  f"ask an admin to tag {r.vm} with one of the user's tags, or to give the "
                  "user the VM's tag (segue user set-tags)",
                  {"role": p.role, "user_tags": sorted(actor.tags),
                   "vm_tags": sorted(r.vm_tags)})


def _tags_allow(actor: PolicyActor, action: str, vm_tags: frozenset[str]) -> bool:
    """Whether casbin, given the user's tag lines, allows ``action`` on a VM in any of the
    scopes of ``vm_tags``."""
    authz = _tag_authorizer(actor.name, actor.role, actor.tags)
    subject = f"{actor.role}@{actor.name}"
    return any(authz.allows(subject, Permission("vm", action), tag_scope(t))
               for t in sorted(vm_tags))


@lru_cache(maxsize=256)
def _tag_authorizer(user: str, role: str, tags: frozenset[str]) -> Authorizer:
    lines = [f"p, {role}@{user}, {tag_scope(t)}, vm, {a}" for t in sorted(tags)
             for a in ACTIONS]
    return Authorizer(policy_text="\n".join(lines))


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
