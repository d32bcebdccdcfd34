"""One HTTP client base for both services: unix and TCP URLs, timeouts, error decoding.

A service URL is ``http(s)://HOST:PORT`` or ``unix:/path/to.sock``. Every answer is decoded
into a wire model (``segue.api``); an error answer (``{"error": {...}, "kind": ...}``) is
raised again as the same ``SegueError`` kind and code the service raised, with its ``field``;
an answer that is no Segue error (a proxy's page, a crash) raises ``Unavailable`` with the
service's ``*_ERROR`` code; a connection failure raises ``Unavailable`` with its
``*_UNREACHABLE`` code. ``Blocking`` runs an async client's calls from synchronous code on one
private event loop.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from segue.api.base import ErrorAnswer
from segue.domain.errors import SegueError, Unavailable, error_from_dict
from segue.security import store, tls

log = logging.getLogger(__name__)

UNIX_PREFIX = "unix:"
T = TypeVar("T")
QueryParams = dict[str, str | int | float | bool]  # a request's query string


def split_url(url: str, name: str = "service") -> tuple[str, str | None]:
    """``(base_url, unix_socket_path)`` of a service URL (``unix:PATH`` or HTTP(S))."""
    if url.startswith(UNIX_PREFIX):
        return f"http://{name}", url[len(UNIX_PREFIX):]
    return url, None


def decode_error(resp: httpx.Response, service: str) -> SegueError:
    """The service's own error from an error answer; ``Unavailable`` (``<SERVICE>_ERROR``)
    when the answer is no Segue error."""
    try:
        answer = ErrorAnswer.model_validate_json(resp.content)
    except ValidationError:
        return Unavailable(f"{service.upper()}_ERROR",
                           f"the {service} answered {resp.status_code}: {resp.text[:500]}",
                           f"see the {service}'s log")
    data = answer.error.model_dump(exclude_none=True)
    if answer.error.field is not None:
        data.setdefault("details", {})["field"] = answer.error.field
    return error_from_dict(answer.kind, data)


class ClientTLS:
    """This peer's side of mutual TLS from its credential directory
    (``segue.security.store``): a client context that trusts only the cluster's CAs (the
    set's ``ca-cert.pem``) and presents this peer's certificate. ``refresh`` follows a new
    ``current`` set: a renewed certificate is loaded into the same context; a changed trust
    bundle (a CA rotation) needs a new ``context``, and clients made with the old one must
    be made again (``refresh`` returns True then). Raises CredentialsMissing without a
    set."""

    def __init__(self, root: Path) -> None:
        self.root = root
        paths = store.current_credentials(root)
        self.context = tls.client_context(paths)
        self._dir = paths.dir
        self._trust = paths.ca_cert.read_bytes()

    def refresh(self) -> bool:
        """Follow the current set if it changed; True when ``context`` is a new one."""
        try:
            paths = store.current_credentials(self.root)
            if paths.dir == self._dir:
                return False
            trust = paths.ca_cert.read_bytes()
            renewed = trust != self._trust
            if renewed:
                self.context = tls.client_context(paths)
            else:
                tls.reload_certificate(self.context, paths)
            self._dir, self._trust = paths.dir, trust
            return renewed
        except (OSError, ssl.SSLError, SegueError) as err:
            log.error("TLS: could not load the credentials in %s: %s (keeping the "
                      "current ones)", self.root, err)
            return False


class ServiceClient:
    """The HTTP base: one ``httpx.AsyncClient`` for one service at ``url``.

    With ``tls`` (an ``https://`` URL), the server must present a certificate of the
    cluster's CA for ``server_name`` (sent as SNI and checked: the controller's
    ``segue-controller``, an agent's host name), and this client presents its own."""

    service = "service"

    def __init__(self, url: str, *, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = 60.0, headers: dict[str, str] | None = None,
                 tls: ssl.SSLContext | None = None, server_name: str | None = None) -> None:
        base_url, uds = split_url(url, self.service)
        if transport is None and uds is not None:
            transport = httpx.AsyncHTTPTransport(uds=uds)
        elif transport is None and tls is not None and url.startswith("https://"):
            transport = httpx.AsyncHTTPTransport(verify=tls)
        self.url = url
        self._extensions = ({"sni_hostname": server_name}
                            if server_name is not None and uds is None else None)
        self._http = httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout,
                                       headers=headers)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def unreachable(self, err: Exception) -> Unavailable:
        return Unavailable(f"{self.service.upper()}_UNREACHABLE",
                           f"the {self.service} at {self.url} did not answer: {err}",
                           f"check that the {self.service} runs and the URL is right")

    async def request(self, method: str, path: str, *, json: BaseModel | None = None,
                      params: QueryParams | None = None) -> httpx.Response:
        """One request; the answer if it is a success, else the service's error raised."""
        body = json.model_dump(mode="json", by_alias=True) if json is not None else None
        try:
            resp = await self._http.request(method, path, json=body, params=params,
                                            extensions=self._extensions)
        except httpx.HTTPError as err:
            raise self.unreachable(err) from err
        if resp.status_code >= 400:
            raise decode_error(resp, self.service)
        return resp

    async def call(self, model: type[T], method: str, path: str, *,
                   json: BaseModel | None = None, params: QueryParams | None = None) -> T:
        """One request whose answer is one ``model`` (a wire model or a domain dataclass)."""
        resp = await self.request(method, path, json=json, params=params)
        return self._decode(TypeAdapter(model), resp)

    async def call_list(self, model: type[T], method: str, path: str, *,
                        params: QueryParams | None = None) -> list[T]:
        """One request whose answer is a list of ``model``."""
        resp = await self.request(method, path, params=params)
        return self._decode(TypeAdapter(list[model]), resp)  # type: ignore[valid-type]

    def _decode(self, adapter: TypeAdapter[T], resp: httpx.Response) -> T:
        try:
            return adapter.validate_json(resp.content)
        except ValidationError as err:
            raise Unavailable(f"{self.service.upper()}_ANSWER_INVALID",
                              f"the {self.service} at {self.url} answered "
                              f"{resp.request.method} {resp.request.url.path} with a body "
                              f"that does not fit: {err.errors()[0]['msg']}",
                              "run the same Segue version on the controller and agents") from err


C = TypeVar("C", bound=ServiceClient)


class Blocking(Generic[C]):
    """An async client used from synchronous code: ``run`` awaits one call on a private
    event loop (the same loop for every call, so the client's connections are reused).

        with Blocking(AgentClient(url)) as agent:
            info = agent.run(agent.client.get_vm("web1"))
    """

    def __init__(self, client: C) -> None:
        self.client = client
        self._runner = asyncio.Runner()

    def run(self, call: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(call)

    def close(self) -> None:
        try:
            self._runner.run(self.client.aclose())
        finally:
            self._runner.close()

    def __enter__(self) -> Blocking[C]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
