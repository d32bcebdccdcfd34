"""The services' HTTPS on the wire (``segue.serving``, ``segue.agent.peergate``,
``segue.clients.base.ClientTLS``): real uvicorn servers on 127.0.0.1 with the cluster's
certificates, real handshakes, real clients.

- An agent takes commands over TCP from the controller's certificate only: another host's
  is refused 403, a client without a certificate or with one of another CA fails the
  handshake; its unix socket stays root's, plain.
- A client checks the server's name: an agent certificate for another host fails.
- A renewed certificate is served without a restart.
- The controller serves HTTPS with the client certificate optional: a host heartbeats with
  its certificate, for itself only; a user without a token gets 401; a certificate of
  another CA fails the handshake.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from test_controller_access import heartbeat

from segue import serving
from segue.agent import peergate
from segue.agent.peergate import ControllerOnly
from segue.api.inventory import Heartbeat
from segue.clients.agent import AgentClient
from segue.clients.base import ClientTLS
from segue.clients.controller import ControllerClient, user_tls_context
from segue.controller.app import create_app
from segue.controller.config import ControllerConfig
from segue.domain.errors import Forbidden, SegueError, Unauthenticated, Unavailable
from segue.httpapi import install_error_handler
from segue.security import pem, pki, store
from segue.security.pki import CertificateAuthority, Identity
from segue.security.store import Credentials
from segue.settings import ListenConfig

NOW = datetime.now(UTC)  # handshakes check validity against the real clock


@dataclass(frozen=True)
class PKI:
    ca: CertificateAuthority
    controller: Path
    host1: Path
    host2: Path
    foreign: Path  # host1, certified by another cluster's CA


def install(root: Path, ca: CertificateAuthority, identity: Identity) -> Path:
    key = pki.generate_key()
    cert = pki.issue_certificate(ca, pki.create_request(identity, key), identity, NOW)
    store.install_credentials(root, Credentials(key, cert, ca.cert), NOW)
    return root


@pytest.fixture
def cluster(tmp_path: Path) -> PKI:
    ca = store.init_cluster(tmp_path / "controller", "lab", NOW)
    return PKI(ca, tmp_path / "controller",
               install(tmp_path / "host1", ca, Identity.host("host1")),
               install(tmp_path / "host2", ca, Identity.host("host2")),
               install(tmp_path / "foreign", pki.create_ca("lab", NOW), Identity.host("host1")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    port: int
    unix: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Serve apps as ``segue agent``/``segue server`` do, each in its own thread."""
    stops: list[tuple[threading.Event, threading.Thread]] = []

    def start(app: FastAPI, tls: serving.ServerTLS) -> Served:
        port = free_port()
        unix = str(tmp_path / f"s{port}.sock")
        listen = ListenConfig(address="127.0.0.1", port=port, unix_socket=unix)
        stop = threading.Event()
        thread = threading.Thread(target=lambda: asyncio.run(
            serving.serve_async(app, listen, tls, stop)), daemon=True)
        thread.start()
        stops.append((stop, thread))
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert thread.is_alive() and time.monotonic() < deadline, "no server"
                time.sleep(0.05)
        return Served(port, unix)

    yield start
    for stop, thread in stops:
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "a server did not stop"


def agent_like(pki_dir: Path) -> FastAPI:
    """An app behind the agent's gate: what reaches its route, and with what certificate."""
    app = FastAPI()
    install_error_handler(app)
    app.add_middleware(ControllerOnly, pki_dir=pki_dir)

    @app.get("/echo")
    async def echo(request: Request) -> dict[str, int]:
        chain = request.scope.get("extensions", {}).get("tls", {}).get("client_cert_chain")
        return {"certificates": len(chain or [])}

    return app


def https(root: Path | None, cafile: Path, server_name: str) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(cafile))
    if root is not None:
        paths = store.current_credentials(root)
        ctx.load_cert_chain(paths.cert, paths.key)
    return httpx.Client(verify=ctx)


def get(client: httpx.Client, url: str, server_name: str) -> httpx.Response:
    return client.get(url, extensions={"sni_hostname": server_name})


def code(resp: httpx.Response) -> str:
    return str(resp.json()["error"]["code"])


def test_an_agent_takes_commands_over_https_from_the_controller_only(
        cluster: PKI, serve: Any) -> None:
    s = serve(agent_like(cluster.host1), serving.ServerTLS(cluster.host1, require_client=True))
    ca = store.current_credentials(cluster.controller).ca_cert
    url = s.url + "/echo"
    with https(cluster.controller, ca, "host1") as controller:
        resp = get(controller, url, "host1")
    assert resp.status_code == 200 and resp.json() == {"certificates": 1}
    with https(cluster.host2, ca, "host1") as host2:
        resp = get(host2, url, "host1")
    assert resp.status_code == 403 and code(resp) == "CERT_WRONG_ROLE"
    for stranger in (None, cluster.foreign):  # no certificate, or one of another CA
        with https(stranger, ca, "host1") as client, pytest.raises(httpx.HTTPError):
            get(client, url, "host1").raise_for_status()
    with httpx.Client(transport=httpx.HTTPTransport(uds=s.unix)) as unix:
        assert unix.get("http://agent/echo").json() == {"certificates": 0}


async def test_the_client_checks_the_agent_is_the_host_it_asked_for(
        cluster: PKI, serve: Any) -> None:
    s = serve(agent_like(cluster.host1), serving.ServerTLS(cluster.host1, require_client=True))
    tls = ClientTLS(cluster.controller).context
    async with AgentClient(s.url, tls=tls, server_name="host1") as right:
        await right.request("GET", "/echo")
    async with AgentClient(s.url, tls=tls, server_name="host2") as wrong:
        with pytest.raises(Unavailable) as err:
            await wrong.request("GET", "/echo")
        assert err.value.code == "AGENT_UNREACHABLE"
        assert "certificate" in err.value.message.lower()


def peer_serial(port: int, root: Path, server_name: str) -> int:
    ctx = ClientTLS(root).context
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509
    return x509.load_der_x509_certificate(der).serial_number


def test_a_renewed_certificate_is_served_without_a_restart(
        cluster: PKI, serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "RELOAD_INTERVAL_S", 0.1)
    s = serve(agent_like(cluster.host1), serving.ServerTLS(cluster.host1, require_client=True))
    before = peer_serial(s.port, cluster.controller, "host1")
    install(cluster.host1, cluster.ca, Identity.host("host1"))
    new_serial = int(store.load_credentials(store.current_credentials(cluster.host1))
                     .cert.serial_number)
    assert new_serial != before
    deadline = time.monotonic() + 10
    while peer_serial(s.port, cluster.controller, "host1") != new_serial:
        assert time.monotonic() < deadline, "the renewed certificate was never served"
        time.sleep(0.1)


async def test_the_controller_takes_a_heartbeat_from_the_host_its_certificate_names(
        cluster: PKI, serve: Any, tmp_path: Path) -> None:
    config = ControllerConfig(create_database=True, database_url=f"sqlite:///{tmp_path}/c.db",
                              pki_dir=cluster.controller)
    s = serve(create_app(config), serving.ServerTLS(cluster.controller, require_client=False))

    def beat(name: str) -> Heartbeat:
        return Heartbeat.model_validate(heartbeat(name))

    async with ControllerClient(s.url, tls=ClientTLS(cluster.host1).context) as host1:
        answer = await host1.heartbeat(beat("host1"))
        assert answer is not None
        with pytest.raises(Forbidden) as refused:
            await host1.heartbeat(beat("host2"))
        assert refused.value.code == "CERT_WRONG_HOST"
    async with ControllerClient(s.url, tls=ClientTLS(cluster.foreign).context) as stranger:
        with pytest.raises(Unavailable):
            await stranger.heartbeat(beat("host1"))
    ca = store.current_credentials(cluster.controller).ca_cert
    async with ControllerClient(s.url, tls=user_tls_context(ca)) as nobody:
        with pytest.raises(Unauthenticated) as unauthenticated:
            await nobody.list_hosts()
        assert unauthenticated.value.code == "AUTH_REQUIRED"
    async with ControllerClient(s.url, tls=user_tls_context(ca)) as nobody:
        with pytest.raises(SegueError):
            await nobody.heartbeat(beat("host1"))


def test_a_server_that_never_restarted_follows_a_ca_rotation(
        cluster: PKI, serve: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Real handshakes: a new CA's certificates are refused until the server's set trusts
    the bundle, then accepted, the server presents its new certificate, and once the old
    CA is dropped its certificates are refused, all without a restart."""
    monkeypatch.setattr(serving, "RELOAD_INTERVAL_S", 0.1)
    monkeypatch.setattr(peergate, "TRUST_RECHECK_S", 0.0)
    s = serve(agent_like(cluster.host1), serving.ServerTLS(cluster.host1, require_client=True))
    url = s.url + "/echo"
    new = pki.create_ca("lab", NOW, common_name="Segue cluster CA 2")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pem.cert_to_pem(cluster.ca.cert) + pem.cert_to_pem(new.cert))
    controller_new = tmp_path / "controller-new"
    key = pki.generate_key()
    cert = pki.issue_controller_certificate(
        new, pki.create_request(Identity.controller(), key), NOW)
    store.install_credentials(controller_new, Credentials(key, cert, new.cert,
                                                          (cluster.ca.cert,)), NOW)

    def status(root: Path) -> int | None:
        with https(root, bundle, "host1") as client:
            try:
                return get(client, url, "host1").status_code
            except httpx.HTTPError:
                return None

    assert status(controller_new) is None  # the old trust refuses the new CA
    assert status(cluster.controller) == 200
    key1 = pki.generate_key()
    host1_new = pki.issue_certificate(new, pki.create_request(Identity.host("host1"), key1),
                                      Identity.host("host1"), NOW)
    store.install_credentials(cluster.host1, Credentials(key1, host1_new, new.cert,
                                                         (cluster.ca.cert,)), NOW)
    deadline = time.monotonic() + 10
    while peer_serial(s.port, controller_new, "host1") != host1_new.serial_number:
        assert time.monotonic() < deadline, "the new certificate was never served"
        time.sleep(0.1)
    assert status(controller_new) == 200  # the bundle trusts the new CA
    assert status(cluster.controller) == 200  # and still the old one
    store.install_credentials(cluster.host1, Credentials(key1, host1_new, new.cert), NOW)
    deadline = time.monotonic() + 10
    while status(cluster.controller) is not None:  # the old CA is dropped
        assert time.monotonic() < deadline, "the old CA was never dropped"
        time.sleep(0.1)
    assert status(controller_new) == 200
