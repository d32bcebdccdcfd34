"""The HTTP edge shared by the agent and the controller: SegueError -> JSON error answer.

The answer is ``{"error": {code, message, hint, details?}, "kind": ...}``; the status comes
from the error's kind, here and nowhere else.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from segue.domain.errors import SegueError

STATUS_BY_KIND = {"invalid": 400, "not_found": 404, "conflict": 409, "insufficient": 409,
                  "unavailable": 503}


def install_error_handler(app: FastAPI) -> None:
    """Answer every SegueError with its code, message and hint."""

    @app.exception_handler(SegueError)
    async def segue_error(_: Request, err: SegueError) -> JSONResponse:
        return JSONResponse(status_code=STATUS_BY_KIND.get(err.kind, 500),
                            content={"error": err.to_dict(), "kind": err.kind})
