"""The agent's OpenAPI document: valid, every success answer with its schema, every body a
wire model, every parameter bounded (what ``/docs`` shows is what the agent speaks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from openapi_spec_validator import validate

from segue.agent.app import create_app
from segue.agent.facts import QemuCapabilities

if TYPE_CHECKING:  # fixtures come from conftest.py; only their types are imported
    from conftest import Lab

# what the agent's routes take (segue.api.agent, segue.api.vm)
REQUEST_MODELS = {"VMSpecBody", "IncomingRequest", "MigrateRequest", "ParametersRequest",
                  "ResumeRequest", "ProbeRequest", "ThroughputRequest", "FilesRequest",
                  "AdoptRequest"}


@pytest.fixture
def openapi(lab: Lab, caps: QemuCapabilities) -> dict[str, Any]:
    return create_app(lab.config(), caps).openapi()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, ops in doc["paths"].items()
            for method, op in ops.items()]


def test_the_document_is_valid_openapi(openapi: dict[str, Any]) -> None:
    validate(openapi)
    assert len(operations(openapi)) == 31


def test_every_success_answer_has_its_schema(openapi: dict[str, Any]) -> None:
    for method, path, op in operations(openapi):
        success = {code: answer for code, answer in op["responses"].items()
                   if code.startswith("2")}
        assert len(success) == 1, (method, path)
        code, answer = next(iter(success.items()))
        if code == "204":
            assert "content" not in answer, (method, path)
            continue
        schema = answer["content"]["application/json"]["schema"]
        ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
        assert ref and ref.startswith("#/components/schemas/"), (method, path, schema)


def test_every_body_is_a_wire_model_and_every_parameter_is_bounded(
        openapi: dict[str, Any]) -> None:
    bodies = set()
    for method, path, op in operations(openapi):
        if "requestBody" in op:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            bodies.add(ref.rsplit("/", 1)[1])
        for param in op.get("parameters", []):
            schema, where = param["schema"], (method, path, param["name"])
            if "anyOf" in schema:  # an optional parameter: its one non-null kind is bounded
                kinds = [k for k in schema["anyOf"] if k.get("type") != "null"]
                assert len(kinds) == 1, where
                schema = kinds[0]
            if schema["type"] in ("integer", "number"):
                assert "maximum" in schema, where
                assert "minimum" in schema or "exclusiveMinimum" in schema, where
            elif schema["type"] == "string":
                assert "maxLength" in schema and "pattern" in schema, where
            else:
                assert schema["type"] == "boolean", where
    assert bodies == REQUEST_MODELS
