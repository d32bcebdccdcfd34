"""The bases of every wire model, bounded field types and the one error shape.

``RequestModel``: what a client sends. Strict: unknown fields are refused, values are not
coerced (``"512"`` is not a number, ``1`` is not ``true``), NaN and infinities are refused.
``ResponseModel``: what a service answers. Unknown fields are ignored (a newer peer may add
some), NaN and infinities still refused.

Every refused request answers HTTP 400 with ``ErrorAnswer``:
``{"error": {"code", "message", "hint", "field"}, "kind": "invalid"}``; other errors use the
same shape with their own kind (``segue.httpapi`` maps kinds to statuses).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from segue.domain.errors import SegueError

# The services' default TCP ports.
AGENT_PORT = 7600
CONTROLLER_PORT = 7700

# Bounded scalars used across the models.
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Text = Annotated[str, Field(max_length=4096)]
ShortText = Annotated[str, Field(max_length=256)]
Port = Annotated[int, Field(ge=1, le=65535)]
NonNegInt = Annotated[int, Field(ge=0, le=2**63 - 1)]
NonNegFloat = Annotated[float, Field(ge=0)]


class RequestModel(BaseModel):
    """A request body: strict and closed (see the module doc)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False,
                              frozen=True)


class ResponseModel(BaseModel):
    """An answer body: open to fields added by newer peers, no NaN or infinity."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, frozen=True)


class ErrorDetail(ResponseModel):
    """One error: a stable ``code``, what went wrong, how to fix it, and (for a refused
    request) the ``field`` at fault, dotted (``spec.nics.0.mac``)."""

    code: str
    message: str
    hint: str = ""
    field: str | None = None
    details: dict[str, JsonValue] | None = None


class ErrorAnswer(ResponseModel):
    """The body of every error answer."""

    error: ErrorDetail
    kind: str = "invalid"


def error_detail(err: SegueError) -> ErrorDetail:
    """A SegueError as the wire shows it (its ``details.field``, if any, also as ``field``)."""
    field = err.details.get("field")
    return ErrorDetail(code=err.code, message=err.message, hint=err.hint,
                       field=str(field) if field is not None else None,
                       details=dict(err.details) or None)


# ---- refused requests: pydantic's findings as the one error shape ----
# Codes of a request the edge refused before any handler ran (per kind of finding).
REQUEST_INVALID = "REQUEST_INVALID"  # a value out of bounds or of the wrong type
REQUEST_FIELD_UNKNOWN = "REQUEST_FIELD_UNKNOWN"
REQUEST_FIELD_MISSING = "REQUEST_FIELD_MISSING"
REQUEST_JSON_INVALID = "REQUEST_JSON_INVALID"
REQUEST_CONTENT_TYPE_INVALID = "REQUEST_CONTENT_TYPE_INVALID"
_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})
_TYPE_HINTS = {
    "finite_number": "NaN and infinities are not numbers here: send a finite number",
    "int_type": "send a JSON integer (not a string, not a float)",
    "int_parsing": "send an integer",
    "float_type": "send a JSON number (not a string)",
    "float_parsing": "send a number",
    "bool_type": "send true or false (JSON booleans, not strings or numbers)",
    "bool_parsing": "send true or false",
    "string_type": "send a JSON string",
    "string_too_long": "shorten it",
    "string_pattern_mismatch": "use letters, digits, '.', '_' or '-' (ASCII), starting with a "
                               "letter or digit",
}


def field_path(loc: Sequence[int | str]) -> str | None:
    """The dotted field of a pydantic error location, without where it came from
    (``("body", "spec", "nics", 0, "mac")`` -> ``spec.nics.0.mac``); None for the whole body."""
    parts = list(loc[1:] if loc and loc[0] in _LOCATIONS else loc)
    return ".".join(str(p) for p in parts) or None


def _code_and_hint(error: Mapping[str, Any], field: str | None) -> tuple[str, str]:
    kind = str(error.get("type", ""))
    if kind == "json_invalid":
        return REQUEST_JSON_INVALID, "send a well-formed JSON document"
    if field is None and isinstance(error.get("input"), bytes):  # a body FastAPI did not parse
        return (REQUEST_CONTENT_TYPE_INVALID,
                "send the body as a JSON object with Content-Type: application/json")
    if kind == "extra_forbidden":
        return REQUEST_FIELD_UNKNOWN, f"remove {field}: the schema (/docs) lists every field"
    if kind == "missing":
        return REQUEST_FIELD_MISSING, f"give {field or 'a body'}: the schema (/docs) says what"
    bound = _TYPE_HINTS.get(kind)
    if bound is None and kind.startswith(("greater", "less")):
        bound = "keep it within the bounds the schema (/docs) gives"
    return REQUEST_INVALID, bound or "compare the request with the schema at /docs"


def refused_request(errors: Sequence[Mapping[str, Any]]) -> ErrorDetail:
    """The error detail of a request pydantic refused (``errors``: ``ValidationError.errors()``
    or FastAPI's ``RequestValidationError.errors()``): the first finding's code, field and
    hint; every finding (field, message, type) in ``details.errors``. Never echoes input."""
    if not errors:
        return ErrorDetail(code=REQUEST_INVALID, message="the request is invalid",
                           hint="compare the request with the schema at /docs")
    first = errors[0]
    loc = tuple(first.get("loc") or ())
    field = None if first.get("type") == "json_invalid" else field_path(loc)
    code, hint = _code_and_hint(first, field)
    message = str(first.get("msg", "invalid"))
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        message = f"the body is not JSON: {ctx.get('error', message)} at character {loc[-1]}"
    elif field:
        message = f"{field}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    found = [{"field": field_path(tuple(e.get("loc") or ())), "message": str(e.get("msg", "")),
              "type": str(e.get("type", ""))} for e in errors[:20]]
    return ErrorDetail(code=code, message=message, hint=hint, field=field,
                       details={"errors": found})
