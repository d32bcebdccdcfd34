"""Who may call the controller (``segue.controller.gate``, ``authz``, ``callers``): 401
without credentials on every route over TCP, each role allowed and refused as the policy
(and docs/security.md) says, root on the unix socket, hosts by their certificates, users by
their tokens; and the users and tokens API."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_scopes import cert_transport, local_transport, token_headers
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from test_controller_checks import FakeAgent, FakePool, host_facts

from segue.controller.app import create_app
from segue.controller.authz import check_routes_declared, requires, route_access
from segue.controller.config import ControllerConfig
from segue.security import pem, pki, store
from segue.security.pki import CertificateAuthority, Identity
from segue.security.roles import default_authorizer
from segue.serving import listen_sockets
from segue.settings import ListenConfig

NOW = datetime.now(UTC)
OPEN = {("GET", "/health"): 200, ("GET", "/cluster/ca"): 200,
        ("GET", "/cluster/trust"): 200, ("GET", "/cluster/crl"): 200,
        ("POST", "/join"): 400}  # public routes: what they answer a request without a body


def concrete(path: str) -> str:
    """A path of a route template, every parameter filled with a plausible value."""
    return re.sub(r"\{([^}]+)\}", lambda m: "0123456789ab" if m[1] == "token_id" else "x1",
                  path)


def every_request(app: FastAPI) -> list[tuple[str, str, APIRoute | None]]:
    """(method, path, API route or None) for every method of every route of the app: its
    API routes, the OpenAPI document and the docs pages."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        for method in sorted(context.methods or ()):
            found.append((method, concrete(str(context.path)),
                          route if isinstance(route, APIRoute) else None))
    return found


def host_cert(ca: CertificateAuthority, name: str) -> str:
    key = pki.generate_key()
    csr = pki.create_request(Identity.host(name), key)
    return pem.cert_to_pem(pki.issue_host_certificate(ca, csr, name, NOW)).decode()


def heartbeat(name: str) -> dict[str, Any]:
    return {"name": name, "url": f"http://{name}:7600", "facts": host_facts(name), "vms": []}


@dataclass
class Access:
    """A controller with fake agents, and ways to call it as anyone."""

    app: FastAPI
    local: httpx.AsyncClient  # root, through the unix socket
    tcp: httpx.AsyncClient  # over TCP, without credentials
    ca: CertificateAuthority
    stack: AsyncExitStack

    async def client(self, transport: httpx.AsyncBaseTransport,
                     headers: dict[str, str] | None = None) -> httpx.AsyncClient:
        return await self.stack.enter_async_context(httpx.AsyncClient(
            transport=transport, base_url="http://controller", headers=headers))

    async def user(self, name: str, role: str, token_role: str | None = None) -> str:
        """A new user with a token (made by root); the token."""
        if (await self.local.get(f"/users/{name}")).status_code == 404:
            assert (await self.local.post("/users", json={"name": name, "role": role})
                    ).status_code == 201
        body = {"role": token_role} if token_role else {}
        resp = await self.local.post(f"/users/{name}/tokens", json=body)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["token"])

    async def as_user(self, role: str, token_role: str | None = None) -> httpx.AsyncClient:
        token = await self.user(f"u-{role}-{token_role}", role, token_role)
        return await self.client(httpx.ASGITransport(app=self.app), token_headers(token))

    async def as_host(self, name: str, ca: CertificateAuthority | None = None
                      ) -> httpx.AsyncClient:
        return await self.client(cert_transport(self.app, [host_cert(ca or self.ca, name)]))


AccessFactory = Callable[..., AbstractAsyncContextManager[Access]]


@pytest.fixture
def access(tmp_path: Path) -> AccessFactory:
    @asynccontextmanager
    async def run(with_ca: bool = True, **settings: Any) -> AsyncIterator[Access]:
        root = tmp_path / "pki"
        if (root / store.CA_DIR).exists():  # a second controller on the same files
            ca = store.load_ca(root)
        else:
            ca = pki.create_ca("lab", NOW)
            if with_ca:
                store.save_ca(root, ca)
        if with_ca:
            settings["pki_dir"] = root
        agents = {n: FakeAgent(n, host_facts(n)) for n in ("h1", "h2")}
        app = create_app(ControllerConfig(create_database=True,
                                          database_url=f"sqlite:///{tmp_path}/c.db",
                                          **settings), FakePool(agents))
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(app.router.lifespan_context(app))
            base = Access(app, None, None, ca, stack)  # type: ignore[arg-type]
            base.local = await base.client(local_transport(app))
            base.tcp = await base.client(httpx.ASGITransport(app=app))
            yield base

    return run


def code(resp: httpx.Response) -> str:
    return str(resp.json()["error"]["code"])


# ---- 401 without credentials ----

async def test_every_route_answers_401_without_credentials_over_tcp(
        access: AccessFactory) -> None:
    async with access() as a:
        requests = every_request(a.app)
        assert len(requests) > 30 and {(m, p) for m, p, _ in requests} >= set(OPEN)
        public = {(m, p) for m, p, r in requests
                  if r is not None and (d := route_access(r)) and d.permission is None}
        assert public == set(OPEN)  # no route is open by accident
        for method, path, _ in requests:
            resp = await a.tcp.request(method, path, json={} if method in (
                "POST", "PUT", "PATCH") else None)
            if (method, path) in OPEN:
                assert resp.status_code == OPEN[method, path], (method, path, resp.text)
                continue
            assert resp.status_code == 401, (method, path, resp.text)
            assert resp.headers["www-authenticate"] == "Bearer"
            if method != "HEAD":
                assert code(resp) == "AUTH_REQUIRED" and resp.json()["kind"] == \
                    "unauthenticated"
        # an unknown route too: nothing is learnt without credentials
        assert (await a.tcp.get("/nowhere")).status_code == 401
        assert (await a.tcp.post("/vms/x1/nothing")).status_code == 401


async def test_bad_tokens_are_refused_with_their_reason(access: AccessFactory) -> None:
    async with access() as a:
        token = await a.user("alice", "admin")
        for header, expected in [
                ("Bearer nonsense", "TOKEN_INVALID"), (f"Basic {token}", "TOKEN_INVALID"),
                (f"Bearer {token[:-2]}xx", "TOKEN_INVALID")]:
            resp = await a.tcp.get("/vms", headers={"Authorization": header})
            assert (resp.status_code, code(resp)) == (401, expected), header
        token_id = token.split("_")[1]
        assert (await a.local.post(f"/tokens/{token_id}/revoke")).json()["state"] == "revoked"
        resp = await a.tcp.get("/vms", headers=token_headers(token))
        assert (resp.status_code, code(resp)) == (401, "TOKEN_REVOKED")
        # a bad token is refused even on the unix socket: whoever sends one means it
        resp = await a.local.get("/vms", headers=token_headers(token))
        assert resp.status_code == 401
        # /health stays open whatever comes with it
        assert (await a.tcp.get("/health", headers=token_headers(token))).status_code == 200


def test_an_app_with_an_undeclared_route_is_refused() -> None:
    app = FastAPI()
    router = APIRouter()

    @router.get("/open")
    async def forgotten() -> None:
        return None

    @router.get("/fine", dependencies=[requires("vm", "read")])
    async def declared() -> None:
        return None

    app.include_router(router)
    with pytest.raises(RuntimeError, match="/open"):
        check_routes_declared(app)


# ---- each role, allowed and refused ----

async def test_each_role_is_allowed_exactly_what_the_policy_grants(
        access: AccessFactory) -> None:
    """Every API route, as every kind of caller: 403 PERMISSION_DENIED exactly where the
    route's declared permission is not granted to the caller's role(s)."""
    authz = default_authorizer()
    async with access() as a:
        callers: dict[str, tuple[httpx.AsyncClient, tuple[str, ...]]] = {
            "viewer": (await a.as_user("viewer"), ("viewer",)),
            "operator": (await a.as_user("operator"), ("operator",)),
            "admin": (await a.as_user("admin"), ("admin",)),
            "admin as viewer": (await a.as_user("admin", "viewer"), ("admin", "viewer")),
            "host": (await a.as_host("h1"), ("host",)),
            "local": (a.local, ("local",)),
        }
        checked = 0
        for method, path, route in every_request(a.app):
            declared = route_access(route) if route else None
            if declared is None or declared.permission is None:
                continue
            for who, (client, roles) in callers.items():
                allowed = authz.allows_all(roles, declared.permission)
                if allowed and method == "POST" and path.startswith("/cluster/ca/rotate"):
                    continue  # it would rotate the CA under the other callers' certificates
                resp = await client.request(method, path, json={} if method in (
                    "POST", "PUT", "PATCH") else None)
                if allowed:
                    assert resp.status_code not in (401, 403), (who, method, path, resp.text)
                else:
                    assert resp.status_code == 403, (who, method, path, resp.text)
                    assert code(resp) == "PERMISSION_DENIED"
                checked += 1
        assert checked > 150


REPRESENTATIVE = [  # (role, method, path, allowed): docs/security.md in a few lines
    ("viewer", "GET", "/vms", True),
    ("viewer", "GET", "/migrations", True),
    ("viewer", "POST", "/vms/x1/start", False),
    ("viewer", "POST", "/vms/x1/migrations", False),
    ("operator", "POST", "/vms/x1/start", True),
    ("operator", "POST", "/vms/x1/stop", True),
    ("operator", "POST", "/vms/x1/migrations", True),
    ("operator", "POST", "/migrations/x1/cancel", True),
    ("operator", "POST", "/hosts/x1/disable-migration", True),
    ("operator", "POST", "/vms", False),
    ("operator", "DELETE", "/vms/x1", False),
    ("operator", "POST", "/cluster/baseline/raise", False),
    ("operator", "POST", "/users", False),
    ("operator", "GET", "/audit", False),
    ("admin", "POST", "/vms", True),
    ("admin", "DELETE", "/vms/x1", True),
    ("admin", "POST", "/users", True),
    ("admin", "GET", "/audit", True),
    ("admin", "POST", "/hosts/heartbeat", False),
]


async def test_representative_actions_per_role(access: AccessFactory) -> None:
    async with access() as a:
        clients = {role: await a.as_user(role) for role in ("viewer", "operator", "admin")}
        for role, method, path, allowed in REPRESENTATIVE:
            resp = await clients[role].request(method, path, json={} if method == "POST"
                                               else None)
            assert (resp.status_code != 403) is allowed, (role, method, path, resp.text)
        resp = await clients["viewer"].post("/vms/x1/start")
        error = resp.json()["error"]
        assert error["details"] == {"role": "viewer", "action": "start", "object": "vm"}
        assert "user u-viewer-None" in error["message"]


# ---- hosts: certificates and heartbeats ----

async def test_a_host_heartbeats_for_itself_only_and_does_nothing_else(
        access: AccessFactory) -> None:
    async with access() as a:
        h1 = await a.as_host("h1")
        assert (await h1.post("/hosts/heartbeat", json=heartbeat("h1"))).status_code == 200
        resp = await h1.post("/hosts/heartbeat", json=heartbeat("h2"))
        assert (resp.status_code, code(resp)) == (403, "CERT_WRONG_HOST")
        assert (await h1.get("/vms")).status_code == 403
        assert (await h1.get("/whoami")).json()["name"] == "h1"
        # a user may not pose as a host, whatever its role
        admin = await a.as_user("admin")
        resp = await admin.post("/hosts/heartbeat", json=heartbeat("h2"))
        assert (resp.status_code, code(resp)) == (403, "PERMISSION_DENIED")
        assert [h["name"] for h in (await a.local.get("/hosts")).json()] == ["h1"]


async def test_certificates_of_another_ca_or_without_a_ca_are_refused(
        access: AccessFactory) -> None:
    async with access() as a:
        stranger = await a.as_host("h1", pki.create_ca("other", NOW))
        resp = await stranger.post("/hosts/heartbeat", json=heartbeat("h1"))
        assert (resp.status_code, code(resp)) == (401, "CERT_UNTRUSTED")
        garbage = await a.client(cert_transport(a.app, ["not a certificate"]))
        resp = await garbage.get("/vms")
        assert (resp.status_code, code(resp)) == (401, "CERT_INVALID")
    async with access(with_ca=False) as a:  # no CA configured: a certificate counts for nothing
        resp = await (await a.as_host("h1")).post("/hosts/heartbeat", json=heartbeat("h1"))
        assert (resp.status_code, code(resp)) == (401, "AUTH_REQUIRED")


async def test_insecure_host_heartbeats_opens_heartbeats_only(access: AccessFactory) -> None:
    async with access(insecure_host_heartbeats=True) as a:
        assert (await a.tcp.post("/hosts/heartbeat", json=heartbeat("h2"))).status_code == 200
        assert (await a.tcp.get("/hosts")).status_code == 401
        assert (await a.tcp.post("/vms/x1/start")).status_code == 401


# ---- the unix socket, served for real ----

@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The controller served by uvicorn on a unix socket and a TCP port, as ``segue
    server`` serves it; yields (socket path, port)."""
    uds = str(tmp_path / "controller.sock")
    app = create_app(ControllerConfig(create_database=True,
                                      database_url=f"sqlite:///{tmp_path}/c.db"))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    socks = [tcp, *listen_sockets(ListenConfig(unix_socket=uds))]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": socks}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "controller did not start"
        time.sleep(0.02)
    yield uds, tcp.getsockname()[1]
    server.should_exit = True
    thread.join(timeout=10)


def test_uvicorn_serves_root_on_the_unix_socket_and_asks_tcp_for_credentials(
        served: tuple[str, int]) -> None:
    uds, port = served
    assert Path(uds).stat().st_mode & 0o777 == 0o600
    with httpx.Client(transport=httpx.HTTPTransport(uds=uds), base_url="http://c") as local:
        whoami = local.get("/whoami").json()
        assert (whoami["kind"], whoami["role"]) == ("local", "local")
        assert local.post("/users", json={"name": "ops", "role": "operator"}).status_code == 201
        token = local.post("/users/ops/tokens", json={}).json()["token"]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as tcp:
        assert tcp.get("/health").status_code == 200
        assert tcp.get("/whoami").status_code == 401
        assert tcp.get("/vms").status_code == 401
        me = tcp.get("/whoami", headers=token_headers(token)).json()
        assert (me["kind"], me["name"], me["role"]) == ("user", "ops", "operator")
        assert "migrate vm" in me["permissions"] and "create vm" not in me["permissions"]
        # a client on TCP cannot make itself look like the socket
        forged = tcp.get("/vms", headers={"X-Forwarded-For": "unix:/x", "Host": "/run/x"})
        assert forged.status_code == 401
