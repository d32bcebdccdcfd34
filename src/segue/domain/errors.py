"""The error tree of Segue.

Every error a user can see is a ``SegueError`` with a stable ``code`` (``VM_EXISTS``,
``PORTGROUP_NOT_FOUND``, ...), a one-line ``message`` naming the problem and a ``hint``
naming the fix. ``kind`` says what sort of failure it is; only the HTTP edge maps a kind
to a status code.

Kinds:
- ``invalid``: the request itself is wrong (bad value, unknown reference).
- ``not_found``: the named object does not exist.
- ``conflict``: the request clashes with current state (duplicate, wrong state).
- ``insufficient``: not enough resources for the request.
- ``unavailable``: a dependency (QEMU, an agent, a namespace) did not answer or failed.
- ``unauthenticated``: the caller did not prove who it is (no, a bad or an expired
  certificate or token).
- ``forbidden``: the caller is known, but may not do this (a host certificate where the
  controller's is required, a heartbeat for another host).
"""

from __future__ import annotations

from typing import Any, Literal

ErrorKind = Literal["invalid", "not_found", "conflict", "insufficient", "unavailable",
                    "unauthenticated", "forbidden"]


class SegueError(Exception):
    """Base of every user-visible error: code, kind, message and hint."""

    kind: ErrorKind = "invalid"

    def __init__(self, code: str, message: str, hint: str = "", **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The error as the API and the CLI show it."""
        out: dict[str, Any] = {"code": self.code, "message": self.message, "hint": self.hint}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" + (f" (hint: {self.hint})" if self.hint else "")


class InvalidRequest(SegueError):
    kind: ErrorKind = "invalid"


class NotFound(SegueError):
    kind: ErrorKind = "not_found"


class Conflict(SegueError):
    kind: ErrorKind = "conflict"


class InsufficientResources(SegueError):
    kind: ErrorKind = "insufficient"


class Unavailable(SegueError):
    kind: ErrorKind = "unavailable"


class Unauthenticated(SegueError):
    kind: ErrorKind = "unauthenticated"


class Forbidden(SegueError):
    kind: ErrorKind = "forbidden"


KIND_CLASSES: dict[str, type[SegueError]] = {
    "invalid": InvalidRequest,
    "not_found": NotFound,
    "conflict": Conflict,
    "insufficient": InsufficientResources,
    "unavailable": Unavailable,
    "unauthenticated": Unauthenticated,
    "forbidden": Forbidden,
}


def error_from_dict(kind: str, data: dict[str, Any]) -> SegueError:
    """Rebuild an error that crossed an HTTP boundary (used by the clients)."""
    cls = KIND_CLASSES.get(kind, Unavailable)
    return cls(
        str(data.get("code", "UNKNOWN")),
        str(data.get("message", "unknown error")),
        str(data.get("hint", "")),
        **dict(data.get("details") or {}),
    )
