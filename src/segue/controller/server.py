"""Run the controller on its address and, if configured, a unix socket."""

from __future__ import annotations

from segue.controller.app import create_app
from segue.controller.config import ControllerConfig
from segue.serving import serve


def run_controller(config: ControllerConfig) -> None:
    """Serve until SIGTERM/SIGINT."""
    serve(create_app(config), config.listen, "controller")
