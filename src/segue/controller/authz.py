"""What each route of the controller needs, declared next to the route, and its check.

Every API route declares one of:

- ``requires(object, action)``: the caller must be authenticated (the access gate,
  ``segue.controller.gate``, answered 401 otherwise) and every one of its roles must allow
  ``action`` on ``object`` (``segue.security.roles``; 403 ``PERMISSION_DENIED``
  otherwise). Used as a route dependency, ``dependencies=[requires("vm", "start")]``, or as
  a parameter that gives the handler the caller,
  ``actor: Annotated[Actor, requires("host", "heartbeat", audited=False)]``.
- ``public()``: anyone, with or without credentials (``/health``; a host's first join,
  which proves itself with its join token in the body).

Both take ``audited`` (default true: a state-changing request to the route is written to the
audit log; false for heartbeats, too frequent to keep) and ``target``, ``"<kind>:<field>"``,
the body field that names the request's target when its path names none
(``target="vm:spec.name"`` for ``POST /vms``). ``check_routes_declared`` refuses an app with
an API route that declares nothing, so no route is ever left open by omission.

Errors: ``AuthenticationRequired`` (``AUTH_REQUIRED``) and ``PermissionDenied``
(``PERMISSION_DENIED``), both of ``segue.security.errors``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute
from starlette.types import Scope

from segue.security.actors import Actor
from segue.security.errors import AUTH_REQUIRED, AuthenticationRequired
from segue.security.roles import Permission, default_authorizer

ACTOR_KEY = "segue.actor"  # the request scope's key of the authenticated caller
_ACCESS_ATTR = "segue_access"


@dataclass(frozen=True)
class RouteAccess:
    """What a route declared: its permission (None: public), whether it is audited, and
    the body field naming its target (``kind:dotted.field``)."""

    permission: Permission | None
    audited: bool = True
    target: str | None = None


def requires(obj: str, action: str, *, audited: bool = True, target: str | None = None) -> Any:
    """A dependency: the caller (``Actor``), once its roles allow ``action`` on ``obj``."""
    permission = Permission(obj, action)

    async def allowed(request: Request) -> Actor:
        actor = actor_of(request.scope)
        default_authorizer().require(actor.label, actor.roles, permission)
        return actor

    return _declared(allowed, RouteAccess(permission, audited, target))


def public(*, audited: bool = True, target: str | None = None) -> Any:
    """A dependency that lets anyone in (the caller, if it proved itself, or anonymous)."""

    async def open_to_all(request: Request) -> Actor | None:
        actor: Actor | None = request.scope.get(ACTOR_KEY)
        return actor

    return _declared(open_to_all, RouteAccess(None, audited, target))


def actor_of(scope: Scope) -> Actor:
    """The authenticated caller of a request; AuthenticationRequired if there is none (the
    gate did not run, or the route is public and the caller proved nothing)."""
    actor: Actor | None = scope.get(ACTOR_KEY)
    if actor is None:
        raise AuthenticationRequired(AUTH_REQUIRED, "this request needs credentials",
                                     "send Authorization: Bearer <token> (segue token "
                                     "create), or use the controller's unix socket as root")
    return actor


def route_access(route: BaseRoute) -> RouteAccess | None:
    """What ``route`` declared (None: nothing, or it is not an API route)."""
    if not isinstance(route, APIRoute):
        return None
    return _find(route.dependant)


def check_routes_declared(app: FastAPI) -> None:
    """Raise RuntimeError naming every API route of ``app`` that declares neither
    ``requires`` nor ``public`` (a programming error: such a route would be open)."""
    routes = [c.original_route for c in iter_route_contexts(app.routes)]
    missing = [f"{sorted(r.methods or ())} {r.path}" for r in routes
               if isinstance(r, APIRoute) and route_access(r) is None]
    if missing:
        raise RuntimeError(f"routes without requires()/public(): {', '.join(missing)}")


def _declared(check: Callable[[Request], Awaitable[Actor | None]], access: RouteAccess) -> Any:
    setattr(check, _ACCESS_ATTR, access)
    return Depends(check)


def _find(dependant: Dependant) -> RouteAccess | None:
    for dep in dependant.dependencies:
        access = getattr(dep.call, _ACCESS_ATTR, None)
        if isinstance(access, RouteAccess):
            return access
        if (found := _find(dep)) is not None:
            return found
    return None
