"""Roles and permissions: who may do what on the controller's API, decided by pycasbin.

The model (``policy/rbac_model.conf``) is RBAC with role inheritance and a scope: a request
is ``(role, scope, object, action)``. The policy (``policy/rbac_policy.csv``) grants actions
on objects to roles; ``docs/security.md`` shows it as a table.

- Roles users may have (``USER_ROLES``): ``viewer`` (reads), ``operator`` (a viewer who
  starts, stops and migrates VMs, cancels migrations, switches hosts' maintenance),
  ``admin`` (an operator who also defines and deletes VMs, changes cluster settings,
  manages users and tokens, admits hosts (makes their join tokens), reads the audit log,
  tags VMs and hosts, applies the user-defined policies (``segue.security.policies``) and
  creates and deletes placement rules (``segue.placement.rules``; a viewer reads them).
- Roles no user may have: ``host`` (a host agent proven by its certificate: heartbeat,
  join), ``controller`` (the controller's own certificate: nothing yet), ``local`` (root
  through the controller's unix socket: every role above).
- Objects: ``vm``, ``host``, ``migration``, ``cluster``, ``user``, ``token``, ``audit``,
  ``policy``, ``rule``, ``self`` (the caller itself). Actions: ``read``, ``create``, ``update``,
  ``delete``, ``start``, ``stop``, ``migrate``, ``cancel``, ``maintenance``, ``admin``,
  ``revoke``, ``heartbeat``, ``join``, ``admit``, ``tag``.

A caller may hold several roles at once (``Actor.roles``: a user's role and the narrower
role its token carries); a request is allowed only if every one of them allows it.

The scope is the door for per-tag permissions: routes send ``"*"`` (the whole cluster)
and the shipped lines grant every scope. A ``role-tags`` policy (``segue.security.policies``)
narrows a role to its users' tags with lines of scope ``"tag:<tag>"``
(``p, operator@alice, tag:web, vm, migrate``) in an authorizer of its own, asked for the
scopes of the VM's tags.

Errors (``segue.security.errors``): ``PermissionDenied`` (``PERMISSION_DENIED``, naming the
role, the action and the object), ``RoleInvalid`` (``ROLE_INVALID``,
``TOKEN_ROLE_EXCEEDS_USER``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

import casbin

from segue.security.errors import (
    PERMISSION_DENIED,
    ROLE_INVALID,
    TOKEN_ROLE_EXCEEDS_USER,
    PermissionDenied,
    RoleInvalid,
)

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
HOST, CONTROLLER, LOCAL = "host", "controller", "local"
USER_ROLES = (VIEWER, OPERATOR, ADMIN)
ALL_SCOPES = "*"
MODEL_FILE = "rbac_model.conf"
POLICY_FILE = "rbac_policy.csv"


@dataclass(frozen=True, order=True)
class Permission:
    """An action on a kind of object: ``Permission("vm", "migrate")``."""

    object: str
    action: str

    def __str__(self) -> str:
        return f"{self.action} {self.object}"


def check_user_role(role: str) -> str:
    """``role`` if users may have it; else RoleInvalid (``ROLE_INVALID``)."""
    if role not in USER_ROLES:
        raise RoleInvalid(ROLE_INVALID, f"{role!r} is not a role",
                          f"give one of {', '.join(USER_ROLES)}", field="role")
    return role


class Authorizer:
    """The policy, loaded once: asks casbin, and remembers its answers (the policy does not
    change while the controller runs). Not thread-safe: use it from one thread (the event
    loop)."""

    def __init__(self, model_text: str | None = None, policy_text: str | None = None) -> None:
        files = resources.files("segue.security") / "policy"
        model = casbin.Enforcer.new_model(text=model_text or (files / MODEL_FILE).read_text())
        self._enforcer = casbin.Enforcer(model)  # no adapter: lines are added below
        text = (files / POLICY_FILE).read_text() if policy_text is None else policy_text
        for line in text.splitlines():
            _load_line(self._enforcer, line)
        self._enforcer.build_role_links()
        self._answers: dict[tuple[str, str, str, str], bool] = {}

    def allows(self, role: str, permission: Permission, scope: str = ALL_SCOPES) -> bool:
        """True if ``role`` may do ``permission`` in ``scope``."""
        key = (role, scope, permission.object, permission.action)
        if key not in self._answers:
            self._answers[key] = bool(self._enforcer.enforce(*key))
        return self._answers[key]

    def allows_all(self, roles: Iterable[str], permission: Permission,
                   scope: str = ALL_SCOPES) -> bool:
        """True if every one of ``roles`` (at least one) allows ``permission``."""
        roles = list(roles)
        return bool(roles) and all(self.allows(r, permission, scope) for r in roles)

    def require(self, who: str, roles: Iterable[str], permission: Permission,
                scope: str = ALL_SCOPES) -> None:
        """Raise PermissionDenied (``PERMISSION_DENIED``) unless every one of ``roles``
        allows ``permission``; ``who`` names the caller in the message."""
        roles = list(roles)
        if self.allows_all(roles, permission, scope):
            return
        denying = next((r for r in roles if not self.allows(r, permission, scope)), "none")
        raise PermissionDenied(
            PERMISSION_DENIED, f"{who}: role {denying} may not {permission.action} "
            f"{permission.object}", "ask an admin for a role that allows it "
            "(docs/security.md lists what each role may do)",
            role=denying, action=permission.action, object=permission.object)

    def universe(self) -> list[Permission]:
        """Every permission the policy names, sorted."""
        return sorted({Permission(obj, act) for _, _, obj, act in self._enforcer.get_policy()})

    def permissions(self, role: str) -> list[Permission]:
        """What ``role`` may do cluster-wide, inherited permissions included, sorted."""
        return [p for p in self.universe() if self.allows(role, p)]

    def require_within(self, narrow: str, wide: str) -> None:
        """Raise RoleInvalid (``TOKEN_ROLE_EXCEEDS_USER``) unless ``narrow`` allows nothing
        ``wide`` does not (a token's role must narrow its user's)."""
        beyond = set(self.permissions(narrow)) - set(self.permissions(wide))
        if beyond:
            raise RoleInvalid(TOKEN_ROLE_EXCEEDS_USER,
                              f"role {narrow} may do more than the user's role {wide} "
                              f"({', '.join(str(p) for p in sorted(beyond))})",
                              f"give the token role {wide} or a narrower one", field="role")


@cache
def default_authorizer() -> Authorizer:
    """The shipped policy (one per process)."""
    return Authorizer()


def _load_line(enforcer: casbin.Enforcer, line: str) -> None:
    fields = [f.strip() for f in line.split(",")]
    if not line.strip() or line.lstrip().startswith("#"):
        return
    kind, values = fields[0], fields[1:]
    if kind == "p" and len(values) == 4:
        enforcer.add_policy(*values)
    elif kind == "g" and len(values) == 2:
        enforcer.add_grouping_policy(*values)
    else:
        raise ValueError(f"not a policy line: {line!r}")
