"""The controller's clients of the host agents, one per agent URL.

Tests inject a transport factory so that agents run in-process behind
``httpx.ASGITransport``.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from segue.agent.client import AsyncAgentClient
from segue.clients.agent import AgentClient

TransportFactory = Callable[[str], httpx.AsyncBaseTransport | None]


class AgentPool:
    """Hands out (and finally closes) an AsyncAgentClient per agent base URL."""

    def __init__(self, transport_for: TransportFactory | None = None) -> None:
        self._transport_for = transport_for or (lambda url: None)
        self._clients: dict[str, AsyncAgentClient] = {}
        self._typed: dict[str, AgentClient] = {}

    def client(self, url: str) -> AsyncAgentClient:
        if url not in self._clients:
            self._clients[url] = AsyncAgentClient(url, transport=self._transport_for(url))
        return self._clients[url]

    def typed(self, url: str) -> AgentClient:
        """The typed client (``segue.clients.agent``) of the agent at ``url``."""
        if url not in self._typed:
            self._typed[url] = AgentClient(url, transport=self._transport_for(url))
        return self._typed[url]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        for typed in self._typed.values():
            await typed.aclose()
        self._clients.clear()
        self._typed.clear()
