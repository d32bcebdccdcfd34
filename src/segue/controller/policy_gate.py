"""The controller's enforcement of user-defined policies: the one place every action asks.

``PolicyGate.decide`` reads the policy set and the tags involved (``policy_store``, one
transaction in the database's thread) and asks the pure decision
(``segue.security.policies.evaluate``) on the event loop. ``require`` raises
``PolicyDenied`` (``POLICY_DENIED``, HTTP 403, every denial in ``details["denials"]``).
Callers: migration admission (``initiator`` ``user`` for a request through the API; the
maintenance, DRS and HA loops pass their own), ``--check`` and ``where``
(``check_results``: a ``policy`` check's results), VM create, start and stop.

A migration counts as encrypted unless its options say ``tls`` false (``--no-tls``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from segue.checks import CheckResult
from segue.checks.result import error, passed
from segue.controller import policy_store
from segue.controller.db import Database
from segue.controller.models import utcnow
from segue.security.actors import Actor, ActorKind
from segue.security.policies import (
    Denial,
    PolicyActor,
    PolicyRequest,
    evaluate,
    require_allowed,
)

POLICY_CHECK = "policy"  # the check name of policy results in --check and where



def check_results(denials: list[Denial]) -> list[CheckResult]:
    """Denials as results of the ``policy`` check (one ok result when there are none)."""
    problems = [error(POLICY_CHECK, d.code, f"policy {d.policy}: {d.message}", d.hint,
                      policy=d.policy, kind=d.kind, **d.facts) for d in denials]
    return passed(POLICY_CHECK, problems, "no policy refuses it")


class PolicyGate:
    """Decides actions on VMs against the policies in force (see the module doc)."""

    def __init__(self, db: Database, now: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.now = now

    async def decide_many(self, action: str, vm: str, hosts: Iterable[str | None],
                          actor: Actor | None = None, initiator: str = "user",
                          encrypted: bool = True, vm_tags: Iterable[str] | None = None,
                          at: datetime | None = None) -> dict[str | None, list[Denial]]:
        """The denials of ``action`` on ``vm`` for each of ``hosts`` (where it would run;
        None: nowhere, e.g. a stop). ``actor``: who asked (only a user's role and tags
        count); ``vm_tags``: the VM's tags when the inventory does not know them yet (a
        VM being defined)."""
        hosts = list(hosts)
        user = actor.name if actor is not None and actor.kind is ActorKind.USER else None
        inputs = await self.db.run(policy_store.decision_inputs, vm,
                                   [h for h in hosts if h is not None], user)
        who = None if user is None or actor is None else PolicyActor(
            user, actor.token_role or actor.role, inputs.user_tags)
        tags = inputs.vm_tags if vm_tags is None else frozenset(vm_tags)
        at = at or self.now()
        return {h: evaluate(inputs.policies, PolicyRequest(
            action=action, vm=vm, at=at, vm_tags=tags, host=h,
            host_tags=inputs.host_tags.get(h, frozenset()) if h is not None else frozenset(),
            actor=who, encrypted=encrypted, initiator=initiator)) for h in hosts}

    async def decide(self, action: str, vm: str, host: str | None = None,
                     actor: Actor | None = None, initiator: str = "user",
                     encrypted: bool = True, vm_tags: Iterable[str] | None = None,
                     at: datetime | None = None) -> list[Denial]:
        """The denials of one action (``decide_many`` for one host)."""
        return (await self.decide_many(action, vm, [host], actor, initiator, encrypted,
                                       vm_tags, at))[host]

    async def require(self, action: str, vm: str, host: str | None = None,
                      actor: Actor | None = None, initiator: str = "user",
                      encrypted: bool = True, vm_tags: Iterable[str] | None = None,
                      at: datetime | None = None) -> None:
        """Raise PolicyDenied (``POLICY_DENIED``) if any policy refuses the action."""
        denials = await self.decide(action, vm, host, actor, initiator, encrypted, vm_tags,
                                    at)
        require_allowed(denials, PolicyRequest(action=action, vm=vm, at=at or self.now(),
                                               host=host, initiator=initiator))
