"""The controller's access gate (ASGI middleware): who calls, 401 for nobody, and the audit
log of every state-changing request.

For every HTTP request the gate finds the route it is for and the caller
(``segue.controller.callers.identify``):

- a public route (``authz.public()``) lets anyone in;
- any other request (an API route, the OpenAPI document, an unknown path) needs a caller:
  without credentials it is answered 401 ``AUTH_REQUIRED``, with bad ones 401 with the
  credential's own code (``TOKEN_INVALID``, ``TOKEN_EXPIRED``, ``CERT_UNTRUSTED``...),
  and the route never runs. With ``insecure_host_heartbeats`` a heartbeat without any
  credentials is let in as an unverified host;
- the caller is put in the scope (``authz.ACTOR_KEY``) for the route's own check
  (``authz.requires``: 403 ``PERMISSION_DENIED``).

A POST, PUT, PATCH or DELETE (except to routes declared ``audited=False``: heartbeats) is
then written to the audit log (``controller.audit``) through ``Database.run``, once it is
answered: who (``anonymous``, or ``token:<id>`` for a token that was refused), when, the
method and route template, the target (``vm:web1`` from the path, or the route's declared
body field), the parameters (query and body, secrets redacted: ``security.redaction``) and
the outcome (status and error code), also when the request was refused or the handler
failed (500 ``INTERNAL_ERROR``). A failed audit write is logged; the answer has gone.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segue.api.base import error_detail
from segue.controller import audit, callers
from segue.controller.audit import AuditRecord
from segue.controller.authz import ACTOR_KEY, RouteAccess, route_access
from segue.controller.config import ControllerConfig
from segue.controller.db import Database
from segue.controller.models import utcnow
from segue.domain.errors import SegueError, Unavailable
from segue.httpapi import error_response
from segue.security.actors import ANONYMOUS, Actor, ActorKind, unverified_host
from segue.security.apitokens import token_id_or_none
from segue.security.errors import AUTH_REQUIRED, AuthenticationRequired
from segue.security.redaction import redact, redact_text
from segue.security.roles import Permission

log = logging.getLogger(__name__)
AUDITED_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_BODY_KEPT = 64 * 1024  # bytes of a request body the audit log reads at most
MAX_ERROR_KEPT = 16 * 1024  # bytes of an error answer read for its code
HEARTBEAT = Permission("host", "heartbeat")
# a path's first segment -> the kind of target its first path parameter names
TARGET_KINDS = {"vms": "vm", "hosts": "host", "migrations": "migration", "users": "user",
                "tokens": "token", "cluster": "cluster"}
_NO_CREDENTIALS_HINT = ("send Authorization: Bearer <token> (an admin makes one with segue "
                        "token create), or use the controller's unix socket as root")


@dataclass
class Exchange:
    """What the gate learns of one request while it is answered."""

    template: str | None  # the route's path template; None: no route
    access: RouteAccess | None
    path_params: dict[str, Any]
    actor: Actor = ANONYMOUS
    status: int = 0
    error_code: str | None = None
    body: bytearray = field(default_factory=bytearray)
    answer: bytearray = field(default_factory=bytearray)


class AccessGate:
    """The middleware (see the module doc); ``scope["app"]`` is the controller app, whose
    state holds ``config``, ``db`` and ``trust``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fastapi_app: FastAPI = scope["app"]
        route, template, path_params = _match(fastapi_app, scope)
        ex = Exchange(template, route_access(route) if route else None, path_params)
        started = time.monotonic()
        try:
            await self._admit_and_serve(fastapi_app, scope, receive, send, ex)
        except Exception:
            ex.status, ex.error_code = ex.status or 500, ex.error_code or "INTERNAL_ERROR"
            await self._audit(fastapi_app, scope, ex, started)
            raise
        await self._audit(fastapi_app, scope, ex, started)

    async def _admit_and_serve(self, app: FastAPI, scope: Scope, receive: Receive,
                               send: Send, ex: Exchange) -> None:
        try:
            actor = await self._identify(app, scope, ex)
        except SegueError as err:
            await self._refuse(scope, receive, send, ex, err)
            return
        except Exception:
            log.exception("could not tell who sent %s %s", scope.get("method"),
                          scope.get("path"))
            await self._refuse(scope, receive, send, ex, Unavailable(
                "INTERNAL_ERROR", f"{scope.get('method')} {scope.get('path')} failed "
                "unexpectedly", "see the controller's log"), status=500)
            return
        if actor is not None:
            ex.actor = actor
            scope[ACTOR_KEY] = actor
        await self.app(scope, self._reading(receive, ex), self._watching(send, ex))

    async def _identify(self, app: FastAPI, scope: Scope, ex: Exchange) -> Actor | None:
        """The caller; raises a SegueError to refuse the request."""
        db: Database = app.state.db
        public = ex.access is not None and ex.access.permission is None
        try:
            actor = await callers.identify(scope, db, getattr(app.state, "trust", None))
        except SegueError:
            if public:
                return None  # a public route ignores credentials it cannot use
            _note_token(scope, ex)
            raise
        if actor is None and not public:
            config: ControllerConfig = app.state.config
            if (config.insecure_host_heartbeats and ex.access is not None
                    and ex.access.permission == HEARTBEAT):
                return unverified_host()
            raise AuthenticationRequired(AUTH_REQUIRED, "this request needs credentials",
                                         _NO_CREDENTIALS_HINT)
        return actor

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, ex: Exchange,
                      err: SegueError, status: int | None = None) -> None:
        ex.error_code = err.code
        response = error_response(error_detail(err), "internal" if status == 500 else err.kind,
                                  status)
        ex.status = response.status_code
        if ex.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        log.info("refused %s %s: %s", scope.get("method"), scope.get("path"), err.code)
        await response(scope, receive, send)

    def _reading(self, receive: Receive, ex: Exchange) -> Receive:
        async def reading() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(ex.body) < MAX_BODY_KEPT:
                ex.body.extend(message.get("body", b"")[:MAX_BODY_KEPT - len(ex.body)])
            return message
        return reading

    def _watching(self, send: Send, ex: Exchange) -> Send:
        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                ex.status = int(message["status"])
            elif (message["type"] == "http.response.body" and ex.status >= 400
                  and len(ex.answer) < MAX_ERROR_KEPT):
                ex.answer.extend(message.get("body", b"")[:MAX_ERROR_KEPT - len(ex.answer)])
            await send(message)
        return watching

    async def _audit(self, app: FastAPI, scope: Scope, ex: Exchange, started: float) -> None:
        if scope.get("method") not in AUDITED_METHODS or (ex.access and not ex.access.audited):
            return
        entry = audit_record(scope, ex, (time.monotonic() - started) * 1000)
        try:
            await app.state.db.run(audit.record, entry)
        except Exception:
            log.exception("could not write the audit entry of %s %s by %s", entry.method,
                          entry.path, entry.actor)


def audit_record(scope: Scope, ex: Exchange, duration_ms: float) -> AuditRecord:
    """The audit entry of an answered request."""
    method = str(scope.get("method"))
    template = ex.template or str(scope.get("path"))
    body = redact_text(bytes(ex.body))
    query = redact(dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))))
    params = {k: v for k, v in (("query", query), ("body", body)) if v}
    actor = ex.actor
    return AuditRecord(
        at=utcnow(), actor=actor.name, actor_kind=actor.kind.value,
        role=actor.role if actor.kind is not ActorKind.ANONYMOUS else None,
        token_id=actor.token_id, method=method, route=f"{method} {template}",
        path=str(scope.get("path")), target=_target(template, ex, body),
        status=ex.status, error_code=ex.error_code or _error_code(ex), params=params,
        duration_ms=round(duration_ms, 3))


def _match(app: FastAPI, scope: Scope) -> tuple[BaseRoute | None, str | None,
                                                dict[str, Any]]:
    """The route a request is for (those of included routers too), its path template and
    its path parameters; (None, None, {}) for no route (or not this method)."""
    for context in iter_route_contexts(app.router.routes):
        match, child = context.matches(scope)
        if match is Match.FULL:
            return context.original_route, context.path, dict(child.get("path_params", {}))
    return None, None, {}


def _note_token(scope: Scope, ex: Exchange) -> None:
    """Name a refused token (not its secret) in the audit log: ``token:<id>``."""
    try:
        token = callers.bearer_token_of(scope)
    except SegueError:
        return
    token_id = token_id_or_none(token) if token else None
    if token_id is not None:
        ex.actor = Actor(ActorKind.ANONYMOUS, f"token:{token_id}", "none", token_id=token_id,
                         verified=False)


def _target(template: str, ex: Exchange, body: Any) -> str | None:
    segment = template.strip("/").split("/")[0]
    if ex.path_params:
        kind = TARGET_KINDS.get(segment, segment)
        return f"{kind}:{next(iter(ex.path_params.values()))}"
    if ex.access is None or ex.access.target is None:
        return None
    kind, _, dotted = ex.access.target.partition(":")
    value: Any = body
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return f"{kind}:{value}" if isinstance(value, str | int) else None


def _error_code(ex: Exchange) -> str | None:
    if ex.status < 400 or not ex.answer:
        return None
    try:
        code = json.loads(bytes(ex.answer))["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return str(code)
