"""Run the agent on its management address and, if configured, a unix socket."""

from __future__ import annotations

from segue.agent.app import create_app
from segue.agent.config import AgentConfig
from segue.serving import require_listen, serve, server_tls_for


def run_agent(config: AgentConfig) -> None:
    """Serve until SIGTERM/SIGINT; VMs keep running after the agent stops. Raises
    InvalidRequest (``AGENT_CONFIG_INVALID``) if there is nothing to listen on."""
    require_listen(config.listen, "agent")
    server_tls = server_tls_for(config.listen, config.pki_dir, config.insecure_plain_http,
                                "agent", require_client=True)
    serve(create_app(config), config.listen, "agent", server_tls)
