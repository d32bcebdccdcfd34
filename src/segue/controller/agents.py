"""The controller's clients of the host agents, one per agent URL.

Tests inject a transport factory so that agents run in-process behind
``httpx.ASGITransport``.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from segue.clients.agent import AgentClient
from segue.clients.base import ClientTLS
from segue.domain.errors import Forbidden

HOST_REVOKED = "HOST_REVOKED"

TransportFactory = Callable[[str], httpx.AsyncBaseTransport | None]


class AgentPool:
    """Hands out (and finally closes) the typed client (``segue.clients.agent``) of each
    agent URL.

    With the controller's credentials (``tls``), an ``https://`` agent must present the
    certificate of the host it is recorded as (its name checked through SNI), and the
    controller presents its own: the only certificate an agent takes commands from. A
    renewed controller certificate is picked up at the next client handed out; a new trust
    bundle (a CA rotation) makes new clients (the old ones are closed with the pool).
    ``revoked``: the hosts no command is sent to (``typed`` raises Forbidden
    ``HOST_REVOKED``)."""

    def __init__(self, transport_for: TransportFactory | None = None,
                 tls: ClientTLS | None = None) -> None:
        self._transport_for = transport_for or (lambda url: None)
        self._tls = tls
        self._typed: dict[tuple[str, str], AgentClient] = {}
        self._retired: list[AgentClient] = []
        self.revoked: Callable[[str], bool] = lambda host: False

    def typed(self, url: str, host: str) -> AgentClient:
        """The client of host ``host``'s agent at ``url``; raises Forbidden
        (``HOST_REVOKED``) for a revoked host."""
        if self.revoked(host):
            raise Forbidden(HOST_REVOKED, f"host {host!r} is revoked: the controller sends "
                            "it nothing", "join it again with a new ticket (segue host token "
                            f"{host}; segue agent join --force on the host)", host=host)
        if self._tls is not None and self._tls.refresh():
            self._retired.extend(self._typed.values())
            self._typed.clear()
        key = (url, host)
        if key not in self._typed:
            tls = self._tls.context if self._tls is not None else None
            self._typed[key] = AgentClient(url, transport=self._transport_for(url), tls=tls,
                                           server_name=host if tls is not None else None)
        return self._typed[key]

    async def aclose(self) -> None:
        for typed in [*self._typed.values(), *self._retired]:
            await typed.aclose()
        self._typed.clear()
        self._retired.clear()
