"""Roles and permissions (``segue.security.roles``, the casbin policy) and actors
(``segue.security.actors``).

``EXPECTED`` is the permission table of docs/security.md ("Users, roles and tokens"): the
policy must grant each role exactly these, no more.
"""

from __future__ import annotations

import pytest

from segue.security import pki
from segue.security.actors import (
    LOCAL_ROOT,
    ActorKind,
    certificate_actor,
    require_self,
    unverified_host,
    user_actor,
)
from segue.security.errors import PeerNotAllowed, PermissionDenied, RoleInvalid
from segue.security.roles import (
    Authorizer,
    Permission,
    check_user_role,
    default_authorizer,
)

READS = {"read vm", "read host", "read migration", "read cluster", "read self", "read policy",
         "read rule"}
OPERATES = {"start vm", "stop vm", "migrate vm", "cancel migration", "migrate migration",
            "maintenance host"}
ADMINISTERS = {"create vm", "delete vm", "admin cluster", "read user", "create user",
               "update user", "delete user", "read token", "create token", "revoke token",
               "read audit", "admit host", "tag vm", "tag host", "update policy",
               "create rule", "delete rule"}
HOSTS = {"heartbeat host", "join host", "read self"}
EXPECTED = {
    "viewer": READS,
    "operator": READS | OPERATES,
    "admin": READS | OPERATES | ADMINISTERS,
    "host": HOSTS,
    "controller": set(),
    "local": READS | OPERATES | ADMINISTERS | HOSTS,
}


def perm(text: str) -> Permission:
    action, obj = text.split()
    return Permission(obj, action)


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_each_role_has_exactly_its_documented_permissions(role: str) -> None:
    granted = {str(p) for p in default_authorizer().permissions(role)}
    assert granted == EXPECTED[role]


def test_every_permission_in_the_policy_is_in_the_table() -> None:
    named = {str(p) for p in default_authorizer().universe()}
    assert named == set().union(*EXPECTED.values())


def test_unknown_roles_objects_and_actions_are_refused() -> None:
    authz = default_authorizer()
    assert not authz.allows("root", perm("read vm"))
    assert not authz.allows("admin", perm("read nothing"))
    assert not authz.allows("admin", perm("launch vm"))
    assert not authz.allows_all([], perm("read vm"))  # no role: nothing


def test_no_user_role_may_act_as_a_host() -> None:
    for role in ("viewer", "operator", "admin"):
        assert not default_authorizer().allows(role, perm("heartbeat host"))
        assert not default_authorizer().allows(role, perm("join host"))


def test_a_token_role_narrows_its_user() -> None:
    authz = default_authorizer()
    narrowed = user_actor("alice", "admin", "0123456789ab", "viewer")
    assert narrowed.roles == ("admin", "viewer")
    assert authz.allows_all(narrowed.roles, perm("read vm"))
    assert not authz.allows_all(narrowed.roles, perm("start vm"))
    with pytest.raises(PermissionDenied) as err:
        authz.require(narrowed.label, narrowed.roles, perm("start vm"))
    assert err.value.code == "PERMISSION_DENIED" and err.value.kind == "forbidden"
    assert err.value.details == {"role": "viewer", "action": "start", "object": "vm"}
    assert "viewer" in err.value.message and "start vm" in err.value.message
    # a user demoted below the token's role is held to the user's role
    demoted = user_actor("alice", "viewer", "0123456789ab", "operator")
    assert not authz.allows_all(demoted.roles, perm("start vm"))


def test_a_token_role_may_not_exceed_its_users() -> None:
    authz = default_authorizer()
    authz.require_within("viewer", "operator")
    authz.require_within("admin", "admin")
    with pytest.raises(RoleInvalid) as err:
        authz.require_within("admin", "operator")
    assert err.value.code == "TOKEN_ROLE_EXCEEDS_USER" and "create vm" in err.value.message


def test_only_user_roles_are_given_to_users() -> None:
    assert check_user_role("operator") == "operator"
    for role in ("host", "local", "controller", "root", "Admin"):
        with pytest.raises(RoleInvalid) as err:
            check_user_role(role)
        assert err.value.code == "ROLE_INVALID"


def test_the_scope_leaves_room_for_per_tag_roles() -> None:
    """The door for "an operator may migrate the VMs of their own tag only": a tag-scoped
    role is a few policy lines; cluster-wide lines keep matching every scope."""
    from importlib import resources

    shipped = (resources.files("segue.security") / "policy" / "rbac_policy.csv").read_text()
    authz = Authorizer(policy_text=shipped + "\ng, operator@web, viewer\n"
                       "p, operator@web, tag:web, vm, migrate\n")
    assert authz.allows("operator@web", perm("migrate vm"), "tag:web")
    assert not authz.allows("operator@web", perm("migrate vm"), "tag:db")
    assert not authz.allows("operator@web", perm("migrate vm"))  # cluster-wide: no
    assert authz.allows("operator@web", perm("read vm"), "tag:db")  # inherited "*" line
    assert authz.allows("operator", perm("migrate vm"), "tag:db")


def test_actors_from_certificates() -> None:
    host = certificate_actor(pki.Identity.host("h1"))
    assert (host.kind, host.name, host.role) == (ActorKind.HOST, "h1", "host")
    ctl = certificate_actor(pki.Identity.controller())
    assert (ctl.kind, ctl.role) == (ActorKind.CONTROLLER, "controller")
    assert LOCAL_ROOT.roles == ("local",) and LOCAL_ROOT.label == "local root"


def test_a_host_reports_only_about_itself() -> None:
    host = certificate_actor(pki.Identity.host("h1"))
    require_self(host, "h1")
    with pytest.raises(PeerNotAllowed) as err:
        require_self(host, "h2")
    assert err.value.code == "CERT_WRONG_HOST"
    require_self(LOCAL_ROOT, "h2")
    require_self(unverified_host(), "h2")


def test_the_wire_knows_the_same_user_roles() -> None:
    from typing import get_args

    from segue.api.access import UserRole
    from segue.security.roles import USER_ROLES

    assert get_args(UserRole) == USER_ROLES


def test_the_documented_table_is_the_policy() -> None:
    """docs/security.md, "Roles": one row per permission, a column per role."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    row = re.compile(r"^\| `(\w+)` \| `(\w+)` \| (yes|-) \| (yes|-) \| (yes|-) \| (yes|-) \|",
                     re.MULTILINE)
    documented: dict[str, set[str]] = {r: set() for r in ("viewer", "operator", "admin", "host")}
    rows = row.findall(doc)
    for obj, action, *grants in rows:
        for role, grant in zip(documented, grants, strict=True):
            if grant == "yes":
                documented[role].add(f"{action} {obj}")
    assert len(rows) == len(default_authorizer().universe())
    assert documented == {r: EXPECTED[r] for r in documented}
