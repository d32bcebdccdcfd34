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

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

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
    details: dict[str, Any] | None = None


class ErrorAnswer(ResponseModel):
    """The body of every error answer."""

    error: ErrorDetail
    kind: str = "invalid"
