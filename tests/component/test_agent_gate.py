"""Only the controller commands an agent over the network (``segue.agent.peergate``): with
credentials, every route of the agent refuses a TCP request without the controller's
certificate before it runs, and the refused request changes nothing; the unix socket is
root's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from asgi_scopes import cert_transport, local_transport
from conftest import Lab
from fastapi import FastAPI
from test_controller_access import every_request

from segue.agent.app import create_app
from segue.agent.facts import QemuCapabilities
from segue.security import pem, pki, store
from segue.security.pki import CertificateAuthority, Identity
from segue.security.store import Credentials

NOW = datetime.now(UTC)


def certificate(ca: CertificateAuthority, identity: Identity) -> str:
    key = pki.generate_key()
    cert = pki.issue_certificate(ca, pki.create_request(identity, key), identity, NOW)
    return pem.cert_to_pem(cert).decode()


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return store.init_cluster(tmp_path / "controller", "lab", NOW)


@pytest.fixture
async def app(lab: Lab, caps: QemuCapabilities, ca: CertificateAuthority,
              tmp_path: Path) -> AsyncIterator[FastAPI]:
    key = pki.generate_key()
    identity = Identity.host("host1")
    cert = pki.issue_certificate(ca, pki.create_request(identity, key), identity, NOW)
    store.install_credentials(tmp_path / "host1", Credentials(key, cert, ca.cert), NOW)
    app = create_app(lab.config(pki_dir=tmp_path / "host1"), caps)
    async with app.router.lifespan_context(app):
        yield app


def client(transport: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, base_url="http://agent")


def code(resp: httpx.Response) -> str:
    return str(resp.json()["error"]["code"])


async def test_every_route_refuses_a_caller_without_the_controllers_certificate(
        app: FastAPI, ca: CertificateAuthority) -> None:
    requests = every_request(app)
    assert len(requests) > 20  # the agent's routes, the OpenAPI document and the docs
    other_host = certificate(ca, Identity.host("host2"))
    foreign = certificate(pki.create_ca("lab", NOW), Identity.controller())
    async with client(httpx.ASGITransport(app=app)) as nobody, \
            client(cert_transport(app, [other_host])) as host2, \
            client(cert_transport(app, [foreign])) as stranger:
        for method, path, _ in requests:
            for caller, status, expected in ((nobody, 401, "AUTH_REQUIRED"),
                                             (host2, 403, "CERT_WRONG_ROLE"),
                                             (stranger, 401, "CERT_UNTRUSTED")):
                resp = await caller.request(method, path)
                assert resp.status_code == status, (method, path, resp.text)
                if method != "HEAD":  # a HEAD answer has no body
                    assert code(resp) == expected, (method, path)


async def test_a_refused_request_changes_nothing_and_the_controller_passes(
        app: FastAPI, ca: CertificateAuthority, lab: Lab) -> None:
    evil = {**lab.spec("evil"), "kernel": "/etc/os-release"}
    controller = certificate(ca, Identity.controller())
    async with client(httpx.ASGITransport(app=app)) as nobody, \
            client(cert_transport(app, [controller])) as ctl, \
            client(local_transport(app)) as root:
        resp = await nobody.post("/vms", json=lab.spec("web1"), params={"start": "true"})
        assert resp.status_code == 401
        assert (await root.get("/vms")).json() == []
        resp = await ctl.post("/vms", json=evil)
        assert resp.status_code == 400 and code(resp) == "PATH_OUTSIDE_DATASTORE"
        resp = await ctl.post("/vms", json=lab.spec("web1"))
        assert resp.status_code == 201, resp.text
        assert [vm["name"] for vm in (await root.get("/vms")).json()] == ["web1"]
        assert (await ctl.delete("/vms/web1")).status_code in (200, 204)
