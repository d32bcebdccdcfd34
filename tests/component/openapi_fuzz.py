"""Fuzzing a service through its own OpenAPI document (schemathesis), for the component tests
``test_fuzz_agent.py`` and ``test_fuzz_controller.py``.

schemathesis reads ``/openapi.json`` from the ASGI app and generates requests for every
operation: positive ones (bodies, paths and queries the schema allows) and negative ones
(that it forbids). Requests go through schemathesis's ASGI transport, which runs the app's
lifespan once in its own event-loop thread; a request there is TCP from ``testclient``.
``Scopes`` can make a request come through the controller's unix socket instead (root).

Every operation gets at most ``max_examples`` examples per mode, derandomized (the same
examples on every run), so a run is repeatable and bounded. The failures of all operations
are collected and reported together, each with the smallest example hypothesis found.
"""

from __future__ import annotations

import json
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python import asgi
from starlette.types import ASGIApp, Receive, Scope, Send

SOCKET = "/run/segue/controller.sock"
# Whatever a body, path or query may hold, the answer is one of these: never 422, never 500;
# 503 only as a service's own answer (kind ``unavailable``: a peer or a QEMU did not answer).
ERROR_STATUSES = frozenset({400, 401, 403, 404, 405, 409, 503})
Check = Callable[[schemathesis.Case, schemathesis.Response], None]


class Scopes:
    """The app as a server gives it requests: over TCP, or (``local``) through the
    controller's unix socket, as uvicorn serves it (no client address, the socket as server).
    The lifespan passes through untouched, so the app runs once whichever is used."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.local = app, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.local:
            scope = {**scope, "client": None, "server": (SOCKET, None)}
        await self.app(scope, receive, send)


def load(app: ASGIApp) -> schemathesis.BaseSchema:
    """The app's OpenAPI document as schemathesis reads it (the app's lifespan starts)."""
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def stop_apps() -> None:
    """End every app lifespan schemathesis started (their QEMUs, tasks, databases)."""
    asgi.shutdown_lifespans()


@dataclass
class Fuzzer:
    """Runs every operation of ``schema`` through ``check``; collects what fails."""

    schema: schemathesis.BaseSchema
    max_examples: int
    failures: list[str] = field(default_factory=list)
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)  # "mode status CODE" of errors
    nothing_to_negate: list[str] = field(default_factory=list)

    def operations(self) -> list[schemathesis.APIOperation]:
        found = [result.ok() for result in self.schema.get_all_operations()]
        assert found, "the OpenAPI document lists no operation"
        return found

    def run(self, operation: schemathesis.APIOperation, mode: GenerationMode, check: Check,
            headers: dict[str, str] | None = None,
            path_parameters: dict[str, Any] | None = None,
            query: dict[str, Any] | None = None) -> None:
        """``max_examples`` requests of ``mode`` to ``operation``, each answer ``check``ed;
        ``path_parameters`` fixes some parameters of the path (a known VM's name)."""
        if path_parameters:
            names = {p.name for p in operation.path_parameters}
            path_parameters = {k: v for k, v in path_parameters.items() if k in names}
            if not path_parameters:
                return

        @settings(max_examples=self.max_examples, derandomize=True, database=None,
                  deadline=None, phases=[Phase.explicit, Phase.generate, Phase.shrink],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode,
                                          path_parameters=path_parameters or None,
                                          query=query))
        def one(case: schemathesis.Case) -> None:
            self.requests += 1
            response = case.call(headers=headers, timeout=30)
            self.statuses[response.status_code] += 1
            if response.status_code >= 400 and isinstance(answer := body(response), dict):
                code = (answer.get("error") or {}).get("code")
                self.codes[f"{mode.value} {response.status_code} {code}"] += 1
                if mode is GenerationMode.POSITIVE and str(code).startswith("REQUEST_"):
                    # the edge refused what the schema allows: the schema says too little
                    self.codes[f"  {operation.label}: {answer['error'].get('message')}"] += 1
            try:
                check(case, response)
            except AssertionError as err:
                raise AssertionError(f"{err}\n  sent: {case.as_curl_command(headers)}\n"
                                     f"  answer {response.status_code}: "
                                     f"{response.text[:600]}") from None

        try:
            one()
        except Unsatisfiable:
            if mode is not GenerationMode.NEGATIVE:
                raise
            # no parameter and no body: no request the schema forbids
            self.nothing_to_negate.append(operation.label)
        except Exception as err:  # one operation's failure must not hide another's
            detail = "".join(traceback.format_exception_only(err)).strip()
            self.failures.append(f"{operation.label} ({mode.value}): {detail}")

    def assert_clean(self) -> None:
        assert not self.failures, (f"{len(self.failures)} failing operations:\n\n"
                                   + "\n\n".join(self.failures))


def body(response: schemathesis.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def check_answer(case: schemathesis.Case, response: schemathesis.Response) -> None:
    """No 500 and no 422; an error in the one shape (a code and a kind) with a status the
    service answers (503 only with kind ``unavailable``); a success as its operation's
    schema says."""
    status = response.status_code
    assert status != 500, "500: the service failed unexpectedly"
    assert status != 422, "422: a validation error escaped the error handler"
    if status >= 400:
        assert status in ERROR_STATUSES, f"unexpected status {status}"
        answer = body(response)
        assert isinstance(answer, dict) and isinstance(answer.get("error"), dict), \
            "an error answer outside the one error shape"
        assert answer["error"].get("code") and answer.get("kind"), "an error without code"
        assert status != 503 or answer["kind"] == "unavailable", "503 of another kind"
    else:
        case.validate_response(response, checks=[
            schemathesis.checks.status_code_conformance,
            schemathesis.checks.content_type_conformance,
            schemathesis.checks.response_schema_conformance])


def check_refused(case: schemathesis.Case, response: schemathesis.Response) -> None:
    """A request the schema forbids: refused (4xx) in the one error shape; where the
    schema's own checks find it could not be refused (it serialises to a valid request),
    any well-formed answer."""
    check_answer(case, response)
    if response.status_code < 400:
        case.validate_response(response, checks=[schemathesis.checks.negative_data_rejection])
