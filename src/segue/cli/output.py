"""Output helpers shared by the CLI commands: consoles, error handling, JSON."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from segue.domain.errors import SegueError

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
    """Turn a SegueError raised by a command into a clean message and exit status 1."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SegueError as err:
            fail(err)
    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
