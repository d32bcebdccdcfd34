"""A host's way into the cluster over the controller's API (``controller.api_join``): join
tokens made by admins, the CA offered to anyone and checked against the pin, joins admitted
by a token once, renewals by a host for itself only; the audit log keeps no secret."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_scopes import cert_transport
from test_controller_access import NOW, Access, AccessFactory, access, code

from segue.controller import api_join
from segue.controller.models import utcnow
from segue.security import pem, pki, store, tokens
from segue.security.errors import CertificateUntrusted
from segue.security.pki import Identity, PrivateKey

__all__ = ["access"]  # the fixture, imported


def request_for(host: str, key: PrivateKey | None = None) -> tuple[PrivateKey, str]:
    key = key or pki.generate_key()
    csr = pki.create_request(Identity.host(host), key)
    return key, pem.csr_to_pem(csr).decode()


async def join_token(a: Access, host: str = "h1", **body: Any) -> dict[str, Any]:
    resp = await a.local.post(f"/hosts/{host}/join-token", json=body)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def join(a: Access, token: str, host: str = "h1", csr: str | None = None
               ) -> httpx.Response:
    csr = csr if csr is not None else request_for(host)[1]
    return await a.tcp.post("/join", json={"host": host, "token": token, "csr": csr})


def clock(monkeypatch: pytest.MonkeyPatch, later: timedelta) -> None:
    """The join routes' clock, ``later`` from now."""
    monkeypatch.setattr(api_join, "utcnow", lambda: utcnow() + later)


# ---- the CA ----

async def test_the_ca_is_public_and_checked_against_the_tickets_pin(
        access: AccessFactory) -> None:
    async with access() as a:
        resp = await a.tcp.get("/cluster/ca")
        assert resp.status_code == 200 and resp.json()["cluster"] == "lab"
        offered = pem.cert_from_pem(resp.json()["ca_cert"].encode())
        ticket = await join_token(a)
        tokens.check_ca_pin(offered, ticket["ca_pin"])
        assert ticket["ca_pin"] == tokens.ca_pin(a.ca.cert)
        with pytest.raises(CertificateUntrusted):  # another cluster's CA fails the pin
            tokens.check_ca_pin(pki.create_ca("lab", NOW).cert, ticket["ca_pin"])


async def test_before_cluster_init_there_is_no_ca_and_no_join(access: AccessFactory) -> None:
    async with access(with_ca=False) as a:  # no pki_dir at all
        for resp in (await a.tcp.get("/cluster/ca"),
                     await a.local.post("/hosts/h1/join-token", json={})):
            assert (resp.status_code, code(resp)) == (404, "CA_MISSING"), resp.text
            assert "segue cluster init" in resp.json()["error"]["hint"]


async def test_an_empty_pki_dir_has_no_ca_either(access: AccessFactory, tmp_path: Path
                                                 ) -> None:
    async with access(with_ca=False, pki_dir=tmp_path / "empty") as a:
        resp = await a.tcp.get("/cluster/ca")
        assert (resp.status_code, code(resp)) == (404, "CA_MISSING")
        resp = await join(a, "segue-join.0123456789ab." + "A" * 43)
        assert (resp.status_code, code(resp)) == (404, "CA_MISSING")


# ---- join tokens ----

async def test_only_admins_make_join_tokens(access: AccessFactory) -> None:
    async with access() as a:
        resp = await a.tcp.post("/hosts/h1/join-token", json={})
        assert (resp.status_code, code(resp)) == (401, "AUTH_REQUIRED")
        for role in ("viewer", "operator"):
            resp = await (await a.as_user(role)).post("/hosts/h1/join-token", json={})
            assert (resp.status_code, code(resp)) == (403, "PERMISSION_DENIED"), role
        resp = await (await a.as_host("h1")).post("/hosts/h1/join-token", json={})
        assert resp.status_code == 403
        admin = await a.as_user("admin")
        resp = await admin.post("/hosts/h1/join-token", json={"ttl_s": 600})
        assert resp.status_code == 201, resp.text
        made = resp.json()
        assert made["token"].startswith(f"segue-join.{made['id']}.")
        assert made["host"] == "h1" and made["ca_pin"].startswith("sha256:")
        left = datetime.fromisoformat(made["expires_at"]) - utcnow()
        assert timedelta(0) < left <= timedelta(seconds=600)


async def test_join_token_requests_are_strict(access: AccessFactory) -> None:
    async with access() as a:
        for body, field in [({"ttl_s": 10}, "ttl_s"), ({"ttl_s": 8 * 86400}, "ttl_s"),
                            ({"ttl_s": "3600"}, "ttl_s"), ({"host": "h2"}, "host")]:
            resp = await a.local.post("/hosts/h1/join-token", json=body)
            assert resp.status_code == 400 and resp.json()["error"]["field"] == field, body
        resp = await a.local.post("/hosts/under_score/join-token", json={})
        assert resp.status_code == 400  # not a DNS name: no certificate could name it
        resp = await a.local.post("/hosts/segue-controller/join-token", json={})
        assert (resp.status_code, code(resp)) == (400, "CERT_NAME_INVALID")


async def test_the_controller_url_hint_comes_from_its_listen_address(
        access: AccessFactory) -> None:
    async with access(listen={"address": "10.0.0.2", "port": 7700}) as a:
        assert (await join_token(a))["controller_url"] == "https://10.0.0.2:7700"
    async with access(listen={"address": "0.0.0.0"}) as a:
        assert (await join_token(a))["controller_url"] is None


# ---- joining ----

async def test_a_host_joins_with_its_token_and_gets_a_certificate_for_its_key(
        access: AccessFactory) -> None:
    async with access() as a:
        ticket = await join_token(a)
        key, csr = request_for("h1")
        resp = await join(a, ticket["token"], csr=csr)
        assert resp.status_code == 200, resp.text
        issued = resp.json()
        cert = pem.cert_from_pem(issued["cert"].encode())
        ca_cert = pem.cert_from_pem(issued["ca_cert"].encode())
        tokens.check_ca_pin(ca_cert, ticket["ca_pin"])
        assert pki.verify_certificate(cert, ca_cert, utcnow()) == Identity.host("h1")
        pki.check_key_matches(cert, key)
        # the certificate is what the host calls with from now on
        h1 = await a.client(cert_transport(a.app, [issued["cert"]]))
        assert (await h1.get("/whoami")).json()["name"] == "h1"
        # one host, once
        resp = await join(a, ticket["token"])
        assert (resp.status_code, code(resp)) == (401, "JOIN_TOKEN_USED")


async def test_refused_joins_leave_the_token_unused(access: AccessFactory) -> None:
    async with access() as a:
        token = (await join_token(a))["token"]
        refusals = [
            (await join(a, token, host="h2"), 403, "JOIN_TOKEN_WRONG_HOST"),
            (await join(a, token[:-4] + "AAAA"), 401, "JOIN_TOKEN_INVALID"),
            (await join(a, "segue-join.0123456789ab." + "A" * 43), 401, "JOIN_TOKEN_INVALID"),
            (await join(a, "nonsense"), 401, "JOIN_TOKEN_INVALID"),
            # the token is good, but the request cannot be certified
            (await join(a, token, csr=request_for("h2")[1]), 400, "CSR_INVALID"),
            (await join(a, token, csr="-----BEGIN CERTIFICATE REQUEST-----\nxx\n"
                        "-----END CERTIFICATE REQUEST-----\n"), 400, "CSR_INVALID"),
        ]
        for resp, status, error in refusals:
            assert (resp.status_code, code(resp)) == (status, error), resp.text
        assert (await join(a, token)).status_code == 200


async def test_an_expired_token_admits_nobody(access: AccessFactory,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    async with access() as a:
        token = (await join_token(a, ttl_s=60))["token"]
        clock(monkeypatch, timedelta(seconds=61))
        resp = await join(a, token)
        assert (resp.status_code, code(resp)) == (401, "JOIN_TOKEN_EXPIRED")
        assert "segue host token" in resp.json()["error"]["hint"]


async def test_join_bodies_are_strict_and_bounded(access: AccessFactory) -> None:
    async with access() as a:
        token = (await join_token(a))["token"]
        csr = request_for("h1")[1]
        for body, field in [
                ({"host": "h1", "token": token}, "csr"),
                ({"host": "h1", "token": token, "csr": csr, "role": "admin"}, "role"),
                ({"host": "h1", "token": token, "csr": "x" * 9000}, "csr"),
                ({"host": "h1", "token": "x" * 200, "csr": csr}, "token"),
                ({"host": "h/1", "token": token, "csr": csr}, "host"),
                ({"host": 1, "token": token, "csr": csr}, "host")]:
            resp = await a.tcp.post("/join", json=body)
            assert resp.status_code == 400 and resp.json()["error"]["field"] == field, body
        assert (await join(a, token, csr=csr)).status_code == 200


async def test_a_join_is_audited_without_its_secret_or_request(access: AccessFactory
                                                               ) -> None:
    async with access() as a:
        ticket = await join_token(a)
        csr = request_for("h1")[1]
        assert (await join(a, ticket["token"], csr=csr)).status_code == 200
        assert (await join(a, ticket["token"], csr=csr)).status_code == 401
        resp = await a.local.get("/audit", params={"target": "host:h1"})
        entries = resp.json()
        routes = [(e["route"], e["status"], e["error_code"]) for e in entries]
        assert routes == [("POST /join", 401, "JOIN_TOKEN_USED"), ("POST /join", 200, None),
                          ("POST /hosts/{name}/join-token", 201, None)]
        assert entries[1]["actor"] == "anonymous"
        kept = json.dumps(entries)
        secret = ticket["token"].rsplit(".", 1)[1]
        assert secret not in kept and csr.splitlines()[1] not in kept
        assert entries[1]["params"]["body"]["token"] == "[redacted]"
        assert entries[1]["params"]["body"]["csr"].startswith(
            "-----BEGIN CERTIFICATE REQUEST----- [")


# ---- renewal ----

async def joined(a: Access, host: str) -> httpx.AsyncClient:
    """A client of ``host`` with the certificate it got by joining."""
    resp = await join(a, (await join_token(a, host))["token"], host=host)
    assert resp.status_code == 200, resp.text
    return await a.client(cert_transport(a.app, [resp.json()["cert"]]))


async def test_a_host_renews_its_own_certificate_for_a_new_key(access: AccessFactory
                                                               ) -> None:
    async with access() as a:
        h1 = await joined(a, "h1")
        key, csr = request_for("h1")
        resp = await h1.post("/hosts/h1/certificate", json={"csr": csr})
        assert resp.status_code == 200, resp.text
        cert = pem.cert_from_pem(resp.json()["cert"].encode())
        pki.check_key_matches(cert, key)
        assert pki.verify_certificate(cert, a.ca.cert, utcnow()) == Identity.host("h1")
        resp = await h1.post("/hosts/h1/certificate", json={"csr": request_for("h2")[1]})
        assert (resp.status_code, code(resp)) == (400, "CSR_INVALID")


async def test_a_host_may_not_renew_another_hosts_certificate(access: AccessFactory
                                                              ) -> None:
    async with access() as a:
        h2 = await joined(a, "h2")
        resp = await h2.post("/hosts/h1/certificate", json={"csr": request_for("h1")[1]})
        assert (resp.status_code, code(resp)) == (403, "CERT_WRONG_HOST")
        admin = await a.as_user("admin")
        resp = await admin.post("/hosts/h1/certificate", json={"csr": request_for("h1")[1]})
        assert (resp.status_code, code(resp)) == (403, "PERMISSION_DENIED")
        resp = await a.tcp.post("/hosts/h1/certificate", json={"csr": request_for("h1")[1]})
        assert (resp.status_code, code(resp)) == (401, "AUTH_REQUIRED")
        stranger = await a.as_host("h1", pki.create_ca("lab", NOW))
        resp = await stranger.post("/hosts/h1/certificate",
                                   json={"csr": request_for("h1")[1]})
        assert (resp.status_code, code(resp)) == (401, "CERT_UNTRUSTED")


async def test_the_controllers_own_credentials_from_cluster_init_serve_joins(
        access: AccessFactory, tmp_path: Path) -> None:
    """A pki_dir made by segue cluster init (store.init_cluster): CA and controller set."""
    root = tmp_path / "pki"
    ca = store.init_cluster(root, "prod", NOW)
    async with access() as a:  # the fixture finds the CA there and loads it
        assert a.ca.cert == ca.cert
        assert (await a.tcp.get("/cluster/ca")).json()["cluster"] == "prod"
        assert (await join(a, (await join_token(a))["token"])).status_code == 200
        assert store.current_credentials(root).dir.is_dir()
