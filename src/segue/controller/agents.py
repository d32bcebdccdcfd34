"""The controller's clients of the host agents, one per agent URL.

Tests inject a transport factory so that agents run in-process behind
``httpx.ASGITransport``.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from segue.clients.agent import AgentClient
from segue.clients.base import ClientTLS

TransportFactory = Callable[[str], httpx.AsyncBaseTransport | None]


class AgentPool:
    """Hands out (and finally closes) the typed client (``segue.clients.agent``) of each
    agent URL.

    With the controller's credentials (``tls``), an ``https://`` agent must present the
    certificate of the host it is recorded as (its name checked through SNI), and the
    controller presents its own: the only certificate an agent takes commands from. A
    renewed controller certificate is picked up at the next client handed out."""

    def __init__(self, transport_for: TransportFactory | None = None,
                 tls: ClientTLS | None = None) -> None:
        self._transport_for = transport_for or (lambda url: None)
        self._tls = tls
        self._typed: dict[tuple[str, str], AgentClient] = {}

    def typed(self, url: str, host: str) -> AgentClient:
        """The client of host ``host``'s agent at ``url``."""
        if self._tls is not None:
            self._tls.refresh()
        key = (url, host)
        if key not in self._typed:
            tls = self._tls.context if self._tls is not None else None
            self._typed[key] = AgentClient(url, transport=self._transport_for(url), tls=tls,
                                           server_name=host if tls is not None else None)
        return self._typed[key]

    async def aclose(self) -> None:
        for typed in self._typed.values():
            await typed.aclose()
        self._typed.clear()
