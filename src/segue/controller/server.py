"""Run the controller on its address and, if configured, a unix socket."""

from __future__ import annotations

from segue.controller.app import create_app
from segue.controller.config import ControllerConfig
from segue.serving import require_listen, serve, server_tls_for


def run_controller(config: ControllerConfig) -> None:
    """Serve until SIGTERM/SIGINT. Raises InvalidRequest (``CONTROLLER_CONFIG_INVALID``) if
    there is nothing to listen on."""
    require_listen(config.listen, "controller")
    server_tls = server_tls_for(config.listen, config.pki_dir, config.insecure_plain_http,
                                "controller", require_client=False)
    serve(create_app(config), config.listen, "controller", server_tls)
