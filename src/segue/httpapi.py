"""The HTTP edge shared by the agent and the controller: every error answer in one shape.

Every error answers ``segue.api.base.ErrorAnswer``:
``{"error": {"code", "message", "hint", "field", "details"?}, "kind"}``. The status comes from
the kind, here and nowhere else:
- a ``SegueError``: its kind (``invalid`` 400, ``not_found`` 404, ``conflict`` and
  ``insufficient`` 409, ``unavailable`` 503, ``unauthenticated`` 401, ``forbidden`` 403);
  ``details.field`` becomes ``field``.
- a request refused before its handler ran (FastAPI's ``RequestValidationError`` for the
  body, path or query; malformed JSON; a body that is not JSON): 400, kind ``invalid``, a
  ``REQUEST_*`` code (``segue.api.base.refused_request``), the dotted ``field`` at fault
  (``spec.nics.0.mac``) and a hint naming the fix. Never 422.
- Starlette's own HTTP errors (unknown route, wrong method): their status, codes
  ``ROUTE_NOT_FOUND``, ``METHOD_NOT_ALLOWED``, ``REQUEST_INVALID``.
- any other exception: 500, code ``INTERNAL_ERROR``, kind ``internal``; it is logged with
  its traceback, and the answer names no internals.

``install_error_handler`` also rewrites the app's OpenAPI document so that every operation
shows ``ErrorAnswer`` for 400 and other errors instead of FastAPI's 422 body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segue.api.base import ErrorAnswer, ErrorDetail, error_detail, refused_request
from segue.domain.errors import SegueError

log = logging.getLogger(__name__)
STATUS_BY_KIND = {"invalid": 400, "not_found": 404, "conflict": 409, "insufficient": 409,
                  "unavailable": 503, "unauthenticated": 401, "forbidden": 403,
                  "internal": 500}
HTTP_CODES = {404: "ROUTE_NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


def error_response(detail: ErrorDetail, kind: str, status: int | None = None) -> JSONResponse:
    """The answer of one error: ``ErrorAnswer`` with the status of ``kind`` (or ``status``)."""
    body = ErrorAnswer(error=detail, kind=kind).model_dump(mode="json")
    if body["error"].get("details") is None:
        body["error"].pop("details", None)
    return JSONResponse(status_code=status or STATUS_BY_KIND.get(kind, 500), content=body)


async def _segue_error(_: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, SegueError)
    return error_response(error_detail(err), err.kind)


async def _refused(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, RequestValidationError)
    detail = refused_request(err.errors())
    log.info("refused %s %s: %s: %s", request.method, request.url.path, detail.code,
             detail.message)
    return error_response(detail, "invalid")


async def _http_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, HTTPException)
    status = err.status_code
    code = HTTP_CODES.get(status, "REQUEST_INVALID" if status < 500 else "HTTP_ERROR")
    kind = "not_found" if status == 404 else "invalid" if status < 500 else "unavailable"
    detail = ErrorDetail(code=code, message=f"{request.method} {request.url.path}: {err.detail}",
                         hint="the API's routes and bodies are listed at /docs")
    return error_response(detail, kind, status)


class InternalErrors:
    """ASGI middleware: an exception no handler took answers 500 ``INTERNAL_ERROR`` in the
    one error shape, and is logged (unless the answer had already begun: then it is raised)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise
            log.exception("unexpected error answering %s %s", scope.get("method"),
                          scope.get("path"))
            detail = ErrorDetail(code="INTERNAL_ERROR",
                                 message=f"{scope.get('method')} {scope.get('path')} failed "
                                         "unexpectedly", hint="see the service's log")
            await error_response(detail, "internal")(scope, receive, send)


def _with_error_schemas(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` with ErrorAnswer as every operation's 400 and default answer (and no
    422, which the service never answers)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema and "ErrorAnswer" in app.openapi_schema["components"]["schemas"]:
            return app.openapi_schema
        schema = original()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        error = ErrorAnswer.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(error.pop("$defs", {}))
        schemas["ErrorAnswer"] = error
        ref = {"content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorAnswer"}}}}
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                answers = operation.setdefault("responses", {})
                answers.pop("422", None)
                answers["400"] = {"description": "Invalid request", **ref}
                answers["default"] = {"description": "Error", **ref}
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = schema
        return schema

    return openapi


def install_error_handler(app: FastAPI) -> None:
    """Answer every error of ``app`` in the one error shape (see the module doc)."""
    app.add_exception_handler(SegueError, _segue_error)
    app.add_exception_handler(RequestValidationError, _refused)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(InternalErrors)
    app.openapi = _with_error_schemas(app)  # type: ignore[method-assign]
