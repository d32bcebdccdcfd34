"""The HTTP contract of both services: every route declares its answer's model, and each
service's OpenAPI document is valid and shows a schema for every request and answer body
(and the one error shape instead of FastAPI's 422)."""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from openapi_spec_validator import validate
from pydantic import BaseModel

from segue.agent.app import create_app as create_agent_app
from segue.agent.facts import QemuCapabilities
from segue.api.base import ErrorAnswer, refused_request
from segue.controller.app import create_app as create_controller_app
from segue.controller.config import ControllerConfig
from segue.domain.errors import InvalidRequest
from segue.httpapi import install_error_handler

if TYPE_CHECKING:  # fixtures come from conftest.py; only their types are imported
    from conftest import Lab

SERVICES = ("agent", "controller")
NO_BODY = 204  # an answer without a body needs no model
ERROR_REF = "#/components/schemas/ErrorAnswer"


@pytest.fixture(params=SERVICES)
def app(request: pytest.FixtureRequest, lab: Lab, caps: QemuCapabilities) -> Iterator[FastAPI]:
    """Each service's app, as built (its lifespan never runs: only its routes matter)."""
    if request.param == "agent":
        yield create_agent_app(lab.config(), caps)
    else:
        yield create_controller_app(ControllerConfig(create_database=True, database_url=f"sqlite:///{lab.root}/c.db"))


def is_wire_model(model: Any) -> bool:
    """A pydantic model or dataclass, or a list of them (not a bare dict or Any)."""
    if typing.get_origin(model) is list:
        (item,) = typing.get_args(model)
        return is_wire_model(item)
    return (isinstance(model, type) and issubclass(model, BaseModel)) \
        or dataclasses.is_dataclass(model)


def api_routes(app: FastAPI) -> list[APIRoute]:
    """Every API route of the app, those of included routers too."""
    found = [c.original_route for c in iter_route_contexts(app.routes)]
    return [r for r in found if isinstance(r, APIRoute)]


def test_every_route_declares_its_answers_model(app: FastAPI) -> None:
    assert len(api_routes(app)) > 10
    missing = [f"{sorted(r.methods)} {r.path}: {r.response_model}" for r in api_routes(app)
               if r.status_code != NO_BODY and not is_wire_model(r.response_model)]
    assert not missing, "routes without a response model:\n" + "\n".join(missing)


def operations(app: FastAPI) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def shows_a_model(schema: dict[str, Any]) -> bool:
    """A named schema (``$ref``), or an array of named schemas."""
    if schema.get("type") == "array":
        return shows_a_model(schema.get("items", {}))
    return "$ref" in schema


def test_openapi_is_valid_and_shows_every_body(app: FastAPI) -> None:
    document = app.openapi()
    validate(document)
    schemas = document["components"]["schemas"]
    problems = []
    for where, operation in operations(app):
        body = operation.get("requestBody", {}).get("content", {})
        if body and not shows_a_model(body.get("application/json", {}).get("schema", {})):
            problems.append(f"{where}: request body without a model: {body}")
        for status, answer in operation["responses"].items():
            schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
            if status.startswith("2") and status != str(NO_BODY) and not shows_a_model(schema):
                problems.append(f"{where}: answer {status} without a model: {schema}")
        if "422" in operation["responses"]:
            problems.append(f"{where}: shows 422, which it never answers")
        for status in ("400", "default"):
            error = operation["responses"].get(status, {}).get("content", {})
            if error.get("application/json", {}).get("schema", {}).get("$ref") != ERROR_REF:
                problems.append(f"{where}: {status} is not ErrorAnswer")
    assert not problems, "\n".join(problems)
    assert {"ErrorAnswer", "ErrorDetail"} <= set(schemas)
    assert "HTTPValidationError" not in schemas


def test_every_answer_schema_is_defined(app: FastAPI) -> None:
    document = app.openapi()
    refs = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"].rsplit("/", 1)[-1])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document)
    assert refs <= set(document["components"]["schemas"])


# ---- the error edge itself ----

def edge_app() -> FastAPI:
    app = FastAPI()
    install_error_handler(app)

    @app.get("/boom", response_model=ErrorAnswer)
    async def boom() -> ErrorAnswer:
        raise RuntimeError("a bug, with a secret inside")

    @app.get("/refuse", response_model=ErrorAnswer)
    async def refuse() -> ErrorAnswer:
        raise InvalidRequest("VM_SPEC_INVALID", "nics[0].mac: bad", "use 52:54:00:..",
                             field="nics[0].mac")

    return app


async def test_an_unexpected_error_answers_500_in_the_shape_and_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    transport = httpx.ASGITransport(app=edge_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as http:
        with caplog.at_level(logging.ERROR, logger="segue.httpapi"):
            resp = await http.get("/boom")
        assert resp.status_code == 500
        answer = ErrorAnswer.model_validate(resp.json())
        assert answer.error.code == "INTERNAL_ERROR" and answer.error.hint
        assert "secret" not in resp.text
        assert any(r.exc_info and "secret" in str(r.exc_info[1]) for r in caplog.records)

        resp = await http.get("/refuse")
        assert resp.status_code == 400
        assert resp.json()["error"]["field"] == "nics[0].mac"  # details.field, on top

        resp = await http.get("/nowhere")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "ROUTE_NOT_FOUND"
        resp = await http.post("/boom")
        assert resp.status_code == 405 and resp.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_refused_request_names_the_field_and_the_fix() -> None:
    detail = refused_request([
        {"type": "int_type", "loc": ("body", "spec", "nics", 0, "port"), "msg": "not an int",
         "input": "512"},
        {"type": "extra_forbidden", "loc": ("body", "colour"), "msg": "extra", "input": 1}])
    assert detail.code == "REQUEST_INVALID" and detail.field == "spec.nics.0.port"
    assert detail.message == "spec.nics.0.port: not an int (and 1 more)"
    assert "integer" in detail.hint and "512" not in detail.message
    assert detail.details == {"errors": [
        {"field": "spec.nics.0.port", "message": "not an int", "type": "int_type"},
        {"field": "colour", "message": "extra", "type": "extra_forbidden"}]}
