"""Real TLS handshakes with the cluster's certificates (``segue.security.tls``): OpenSSL
through Python's ``ssl``, in process (memory BIOs, and a socketpair), no network."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from segue.security import pki, store, tls
from segue.security.errors import PeerNotAllowed
from segue.security.pki import CertificateAuthority, Identity
from segue.security.store import CredentialPaths, Credentials

NOW = datetime.now(UTC)  # the handshake checks validity against the real clock


@dataclass(frozen=True)
class Cluster:
    ca: CertificateAuthority
    controller: CredentialPaths
    host1: CredentialPaths
    host2: CredentialPaths
    foreign: CredentialPaths  # host1, certified by another cluster's CA
    root: Path


def install(root: Path, ca: CertificateAuthority, identity: Identity) -> CredentialPaths:
    key = pki.generate_key()
    cert = pki.issue_certificate(ca, pki.create_request(identity, key), identity, NOW)
    return store.install_credentials(root, Credentials(key, cert, ca.cert), NOW)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    root = tmp_path_factory.mktemp("pki")
    ca = store.init_cluster(root / "controller", "lab", NOW)
    other = pki.create_ca("lab", NOW)
    return Cluster(ca, store.current_credentials(root / "controller"),
                   install(root / "host1", ca, Identity.host("host1")),
                   install(root / "host2", ca, Identity.host("host2")),
                   install(root / "foreign", other, Identity.host("host1")), root)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              server_hostname: str) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Both ends of a finished handshake, pumped through memory BIOs; one message each way,
    so that a server's refusal (TLS 1.3 checks the client's certificate after the client
    has finished) surfaces here. Raises ``ssl.SSLError`` from the end that refused."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    pending = [client, server]
    for _ in range(10):
        for end in list(pending):
            try:
                end.do_handshake()
                pending.remove(end)
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if not pending:
            break
    assert not pending, "the handshake did not finish"
    client.write(b"ping")
    s_in.write(c_out.read())
    assert server.read(4) == b"ping"
    server.write(b"pong")
    c_in.write(s_out.read())
    assert client.read(4) == b"pong"
    return server, client


def test_controller_and_host_authenticate_each_other(cluster: Cluster) -> None:
    server, client = handshake(tls.server_context(cluster.host1),
                               tls.client_context(cluster.controller), "host1")
    assert server.version() == client.version() == "TLSv1.3"
    assert tls.peer_identity(server, cluster.ca.cert, NOW) == Identity.controller()
    assert tls.peer_identity(client, cluster.ca.cert, NOW) == Identity.host("host1")


def test_an_agent_reaches_the_controller_by_its_role_name(cluster: Cluster) -> None:
    server, _ = handshake(tls.server_context(cluster.controller),
                          tls.client_context(cluster.host2), pki.CONTROLLER_NAME)
    identity = tls.peer_identity(server, cluster.ca.cert, NOW)
    pki.require_host(identity, "host2")  # a heartbeat of host2, from host2
    with pytest.raises(PeerNotAllowed) as err:
        pki.require_host(identity, "host1")  # ... but not one for host1
    assert err.value.code == "CERT_WRONG_HOST"


def test_a_client_certificate_from_another_ca_fails_the_handshake(cluster: Cluster) -> None:
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        handshake(tls.server_context(cluster.host2), tls.client_context(cluster.foreign),
                  "host2")


def test_a_server_certificate_from_another_ca_fails_the_handshake(cluster: Cluster) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        handshake(tls.server_context(cluster.foreign), tls.client_context(cluster.controller),
                  "host1")


def test_a_client_without_a_certificate_fails_the_handshake(cluster: Cluster) -> None:
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(cafile=cluster.controller.ca_cert)
    with pytest.raises(ssl.SSLError, match="PEER_DID_NOT_RETURN_A_CERTIFICATE"):
        handshake(tls.server_context(cluster.host1), anonymous, "host1")


@pytest.mark.parametrize(("server", "expected"), [("host1", pki.CONTROLLER_NAME),
                                                  ("host1", "host2"),
                                                  ("controller", "host1")])
def test_a_peer_cannot_pass_for_another(cluster: Cluster, server: str, expected: str) -> None:
    paths: CredentialPaths = getattr(cluster, server)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(tls.server_context(paths), tls.client_context(cluster.host2), expected)


def test_a_rotated_certificate_is_presented_without_a_restart(cluster: Cluster) -> None:
    root = cluster.root / "rotating"
    ctx = tls.server_context(install(root, cluster.ca, Identity.host("host3")))
    old = store.load_credentials(store.current_credentials(root)).cert
    _, client = handshake(ctx, tls.client_context(cluster.controller), "host3")
    assert client.getpeercert(binary_form=True) == old.public_bytes(Encoding.DER)
    new_paths = install(root, cluster.ca, Identity.host("host3"))
    tls.reload_certificate(ctx, new_paths)
    _, client = handshake(ctx, tls.client_context(cluster.controller), "host3")
    new = store.load_credentials(new_paths).cert
    assert new.serial_number != old.serial_number
    assert client.getpeercert(binary_form=True) == new.public_bytes(Encoding.DER)


def test_mutual_tls_over_a_socketpair(cluster: Cluster) -> None:
    left, right = socket.socketpair()
    seen: list[object] = []

    def serve() -> None:
        with tls.server_context(cluster.host1).wrap_socket(right, server_side=True) as conn:
            seen.append(tls.peer_identity(conn, cluster.ca.cert, NOW))
            conn.sendall(conn.recv(5).upper())

    worker = threading.Thread(target=serve)
    left.settimeout(10)
    right.settimeout(10)
    worker.start()
    with tls.client_context(cluster.controller).wrap_socket(left,
                                                            server_hostname="host1") as conn:
        conn.sendall(b"hello")
        assert conn.recv(5) == b"HELLO"
        assert tls.peer_identity(conn, cluster.ca.cert, NOW) == Identity.host("host1")
    worker.join(10)
    assert seen == [Identity.controller()]
