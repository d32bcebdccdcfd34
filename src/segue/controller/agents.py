"""The controller's clients of the host agents, one per agent URL.

Tests inject a transport factory so that agents run in-process behind
``httpx.ASGITransport``.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from segue.clients.agent import AgentClient

TransportFactory = Callable[[str], httpx.AsyncBaseTransport | None]


class AgentPool:
    """Hands out (and finally closes) the typed client (``segue.clients.agent``) of each
    agent URL."""

    def __init__(self, transport_for: TransportFactory | None = None) -> None:
        self._transport_for = transport_for or (lambda url: None)
        self._typed: dict[str, AgentClient] = {}

    def typed(self, url: str) -> AgentClient:
        """The client of the agent at ``url``."""
        if url not in self._typed:
            self._typed[url] = AgentClient(url, transport=self._transport_for(url))
        return self._typed[url]

    async def aclose(self) -> None:
        for typed in self._typed.values():
            await typed.aclose()
        self._typed.clear()
