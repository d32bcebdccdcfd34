"""Revoking a host and rotating the cluster's CA against a real controller app
(``controller.api_trust``) and a host's credentials (``agent.credentials``): a revoked host
is refused (401 ``CERT_REVOKED``) and cannot renew, the CRL names it; during a rotation a
host moves onto the new CA, the finish is refused while a host lags, and afterwards a
certificate of the old CA is refused."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from test_agent_join import URL, Transports, host_client, ticket
from test_controller_access import AccessFactory, access, heartbeat

from segue.agent.credentials import join_cluster, renew_if_due, sync_trust
from segue.controller.models import utcnow
from segue.domain.errors import SegueError
from segue.security import pem, pki, revocation, store
from segue.security.errors import CertificateRevoked

__all__ = ["access"]  # the fixture, imported


def code(resp: httpx.Response) -> str:
    return str(resp.json()["error"]["code"])


async def beat(a: object, root: Path, name: str = "h1") -> httpx.Response:
    async with host_client(a, root) as client:  # type: ignore[arg-type]
        return await client._http.post("/hosts/heartbeat", json=heartbeat(name))


async def test_a_revoked_host_is_refused_and_cannot_renew(access: AccessFactory,
                                                         tmp_path: Path) -> None:
    async with access() as a:
        root = tmp_path / "h1-pki"
        await join_cluster(URL, *await ticket(a), "h1", root, transports=Transports(a))
        assert (await beat(a, root)).status_code == 200
        serial = store.load_credentials(store.current_credentials(root)).cert.serial_number
        missing = await a.local.post("/hosts/nope/revoke", json={"reason": "x"})
        assert missing.status_code == 404 and code(missing) == "HOST_NOT_FOUND"
        resp = await a.local.post("/hosts/h1/revoke", json={"reason": "disk stolen"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["serials"] == [f"{serial:x}"]
        refused = await beat(a, root)
        assert refused.status_code == 401 and code(refused) == "CERT_REVOKED"
        async with host_client(a, root) as client:
            with pytest.raises(SegueError) as err:
                await renew_if_due(root, client, utcnow(), force=True)
        assert err.value.code == "CERT_REVOKED"
        again = await a.local.post("/hosts/h1/revoke", json={})
        assert again.status_code == 409 and code(again) == "HOST_ALREADY_REVOKED"
        hosts = (await a.local.get("/hosts")).json()
        assert [h["state"] for h in hosts if h["name"] == "h1"] == ["disconnected"]
        assert a.app.state.trust.revocations.is_host_revoked("h1")
        # the CRL names the serial; a host stores it as ca-crl.pem
        other = tmp_path / "h2-pki"
        await join_cluster(URL, *await ticket(a, "h2"), "h2", other, transports=Transports(a))
        async with host_client(a, other) as client:
            await sync_trust(other, client, utcnow())
        crl_file = store.current_credentials(other).dir / store.CA_CRL
        crls = revocation.crls_from_pem(crl_file.read_bytes())
        h1_cert = store.load_credentials(store.current_credentials(root)).cert
        with pytest.raises(CertificateRevoked):
            revocation.check_crl(h1_cert, crls, [a.ca.cert])
        audit = (await a.local.get("/audit", params={"target": "host:h1"})).json()
        assert any(e["route"] == "POST /hosts/{name}/revoke" for e in audit)
        # joining again with a new ticket lets it back in; the old certificate stays out
        await join_cluster(URL, *await ticket(a), "h1", root, force=True,
                           transports=Transports(a))
        assert (await beat(a, root)).status_code == 200
        assert not a.app.state.trust.revocations.is_host_revoked("h1")
        assert a.app.state.trust.revocations.serials[serial].host == "h1"


async def test_a_rotation_moves_hosts_to_the_new_ca_and_then_drops_the_old_one(
        access: AccessFactory, tmp_path: Path) -> None:
    async with access(ca_rotation_grace_s=0) as a:
        root = tmp_path / "h1-pki"
        await join_cluster(URL, *await ticket(a), "h1", root, transports=Transports(a))
        assert (await beat(a, root)).status_code == 200
        old_h2 = await a.as_host("h2")  # a certificate of the old CA
        assert (await old_h2.post("/hosts/heartbeat", json=heartbeat("h2"))).status_code == 200
        assert (await a.local.post("/cluster/ca/rotate/finish")).json()["error"]["code"] == \
            "CA_ROTATION_NOT_STARTED"
        started = await a.local.post("/cluster/ca/rotate")
        assert started.status_code == 200, started.text
        status = started.json()
        assert status["rotating"] and sorted(status["lagging"]) == ["h1", "h2"]
        again = await a.local.post("/cluster/ca/rotate")
        assert again.status_code == 409 and code(again) == "CA_ROTATION_IN_PROGRESS"
        bundle = (await a.tcp.get("/cluster/trust")).json()
        assert len(bundle["ca_certs"]) == 2
        new_ca = pem.cert_from_pem(bundle["issuing_ca"].encode())
        assert new_ca != a.ca.cert
        # the host takes the bundle, then renews onto the new CA
        async with host_client(a, root) as client:
            issuing = await sync_trust(root, client, utcnow())
        assert store.load_trust(store.current_credentials(root)) == [a.ca.cert, new_ca]
        async with host_client(a, root) as client:
            assert await renew_if_due(root, client, utcnow(), issuing=issuing) is not None
        creds = store.load_credentials(store.current_credentials(root))
        assert pki.issuer_in(creds.cert, [new_ca]) is not None
        assert (await beat(a, root)).status_code == 200  # trusted at once
        lagging = await a.local.post("/cluster/ca/rotate/finish")
        assert lagging.status_code == 409 and code(lagging) == "CA_ROTATION_HOSTS_LAGGING"
        assert lagging.json()["error"]["details"]["hosts"] == ["h2"]
        assert (await a.local.get("/cluster/ca/rotation")).json()["rotating"]
        finished = await a.local.post("/cluster/ca/rotate/finish", params={"force": True})
        assert finished.status_code == 200, finished.text
        assert not finished.json()["rotating"]
        refused = await old_h2.post("/hosts/heartbeat", json=heartbeat("h2"))
        assert refused.status_code == 401 and code(refused) == "CERT_UNTRUSTED"
        assert (await beat(a, root)).status_code == 200
        async with host_client(a, root) as client:
            await sync_trust(root, client, utcnow())
        assert store.load_trust(store.current_credentials(root)) == [new_ca]


async def test_the_cli_revokes_and_rotates(access: AccessFactory, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from test_controller_inventory import LoopBridge
    from typer.testing import CliRunner

    from segue.cli.main import app as cli
    from segue.clients.controller import ControllerClient

    async with access(ca_rotation_grace_s=0) as a:
        root = tmp_path / "h1-pki"
        await join_cluster(URL, *await ticket(a), "h1", root, transports=Transports(a))
        bridge = LoopBridge(a.app, asyncio.get_running_loop())
        monkeypatch.setattr(ControllerClient, "from_env", classmethod(
            lambda cls, url=None, token=None: cls("unix:/run/segue/controller.sock",
                                                  transport=bridge)))

        async def segue(*args: str, code: int = 0) -> str:
            result = await asyncio.to_thread(CliRunner().invoke, cli, list(args))
            assert result.exit_code == code, result.output
            return result.output

        assert "CLI_OPTIONS_INVALID" in await segue("cluster", "rotate-ca", "--force", code=1)
        assert not a.app.state.trust.revocations.is_host_revoked("h1")  # nothing changed
        assert "rotating" in await segue("cluster", "rotate-ca")
        assert "h1" in await segue("cluster", "rotate-ca", "--status")
        assert "CA_ROTATION_HOSTS_LAGGING" in await segue("cluster", "rotate-ca", "--finish",
                                                          code=1)
        out = await segue("host", "revoke", "h1", "--reason", "test")
        assert "revoked" in out
        assert "no rotation running" in await segue("cluster", "rotate-ca", "--finish")
