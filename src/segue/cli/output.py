"""Output helpers shared by the CLI commands: consoles, error handling, JSON."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from pydantic_core import to_jsonable_python
from rich.console import Console

from segue.api.base import refused_request
from segue.domain.errors import InvalidRequest, SegueError

F = TypeVar("F", bound=Callable[..., Any])


# Rich assumes 80 columns when output is not a terminal; tables then squeeze into ellipses.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def fail(err: SegueError) -> None:
    """Print one clear error line (and the hint) and exit 1."""
    err_console.print(f"[bold red]error[/]: {err.code}: {err.message}", highlight=False)
    if err.hint:
        err_console.print(f"  hint: {err.hint}", highlight=False)
    raise typer.Exit(1)


def handles_errors(func: F) -> F:
    """Turn a SegueError raised by a command into a clean message and exit status 1; a
    request the command could not even build (a value its wire model refuses) is shown as
    the controller would refuse it (``REQUEST_*`` code, field and hint)."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SegueError as err:
            fail(err)
        except ValidationError as err:
            detail = refused_request(err.errors())
            fail(InvalidRequest(detail.code, detail.message, detail.hint))
    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """``data`` (wire models, lists of them, or plain JSON values) as indented JSON."""
    sys.stdout.write(json.dumps(to_jsonable_python(data, by_alias=True), indent=2,
                                default=str) + "\n")
