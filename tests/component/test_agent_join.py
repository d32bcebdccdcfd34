"""A host joins the cluster and renews its certificate (``segue.agent.credentials``) against
a real controller app: the CA is trusted only by its pin, the key never leaves the host,
nothing is written by a join that fails, and a renewal swaps ``current`` to a new key."""

from __future__ import annotations

import asyncio
import ssl
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from asgi_scopes import cert_transport
from test_controller_access import Access, AccessFactory, access
from test_controller_join import join_token

from segue.agent import credentials
from segue.agent.credentials import checked_credentials, join_cluster, renew_if_due
from segue.api.join import IssuedCertificate
from segue.clients.controller import ControllerClient
from segue.controller.models import utcnow
from segue.domain.errors import SegueError
from segue.security import pem, pki, store, tokens
from segue.security.pki import Identity

__all__ = ["access"]  # the fixture, imported
URL = "https://10.0.0.2:7700"


class Transports:
    """The joins' transports, to the controller app; remembers the TLS setting of each."""

    def __init__(self, a: Access) -> None:
        self.app, self.asked = a.app, list[ssl.SSLContext | bool]()

    def __call__(self, verify: ssl.SSLContext | bool) -> httpx.AsyncBaseTransport:
        self.asked.append(verify)
        return httpx.ASGITransport(app=self.app)


async def ticket(a: Access, host: str = "h1") -> tuple[str, str]:
    made = await join_token(a, host)
    return made["token"], made["ca_pin"]


async def refused(code: str, **kwargs: object) -> None:
    with pytest.raises(SegueError) as err:
        await join_cluster(**kwargs)  # type: ignore[arg-type]
    assert err.value.code == code, err.value


async def test_a_host_joins_and_installs_its_set(access: AccessFactory, tmp_path: Path) -> None:
    async with access() as a:
        token, pin = await ticket(a)
        transports = Transports(a)
        paths = await join_cluster(URL, token, pin, "h1", tmp_path / "host-pki",
                                   transports=transports)
        # the CA was fetched without trust, the join sent over TLS trusting that CA alone
        assert transports.asked[0] is False and isinstance(transports.asked[1], ssl.SSLContext)
        assert transports.asked[1].verify_mode == ssl.CERT_REQUIRED
        assert transports.asked[1].check_hostname
        assert paths == store.current_credentials(tmp_path / "host-pki")
        creds = store.load_credentials(paths)
        assert pki.verify_certificate(creds.cert, a.ca.cert, utcnow()) == Identity.host("h1")
        assert paths.key.stat().st_mode & 0o777 == 0o600
        # the token is spent
        resp = await a.tcp.post("/join", json={"host": "h1", "token": token, "csr": "x"})
        assert resp.json()["error"]["code"] == "JOIN_TOKEN_USED"


async def test_a_wrong_pin_stops_the_join_before_the_token_is_sent(
        access: AccessFactory, tmp_path: Path) -> None:
    async with access() as a:
        token, _ = await ticket(a)
        other_pin = tokens.ca_pin(pki.create_ca("lab", utcnow()).cert)
        root = tmp_path / "host-pki"
        await refused("CA_PIN_MISMATCH", controller_url=URL, token=token, ca_pin=other_pin,
                      host="h1", pki_dir=root, transports=Transports(a))
        await refused("CA_PIN_INVALID", controller_url=URL, token=token, ca_pin="sha256:x",
                      host="h1", pki_dir=root, transports=Transports(a))
        assert not root.exists()
        # the token was never sent: it still admits the host
        await join_cluster(URL, token, tokens.ca_pin(a.ca.cert), "h1", root,
                           transports=Transports(a))


async def test_refused_joins_write_nothing(access: AccessFactory, tmp_path: Path) -> None:
    async with access() as a:
        token, pin = await ticket(a)
        root = tmp_path / "host-pki"
        args = {"controller_url": URL, "ca_pin": pin, "pki_dir": root}
        await refused("JOIN_TOKEN_WRONG_HOST", token=token, host="h2",
                      transports=Transports(a), **args)
        nothing_asked = Transports(a)
        await refused("JOIN_TOKEN_INVALID", token="nonsense", host="h1",
                      transports=nothing_asked, **args)
        await refused("CERT_NAME_INVALID", token=token, host="segue-controller",
                      transports=nothing_asked, **args)
        assert nothing_asked.asked == []  # refused before any request
        assert not root.exists()
        await join_cluster(URL, token, pin, "h1", root, transports=Transports(a))
        await refused("JOIN_TOKEN_USED", token=token, host="h1", transports=Transports(a),
                      controller_url=URL, ca_pin=pin, pki_dir=tmp_path / "other")
        assert not (tmp_path / "other").exists()


async def test_a_joined_host_joins_again_only_with_force(access: AccessFactory,
                                                         tmp_path: Path) -> None:
    async with access() as a:
        root = tmp_path / "host-pki"
        first = await join_cluster(URL, *await ticket(a), "h1", root, transports=Transports(a))
        token, pin = await ticket(a)
        nothing_asked = Transports(a)
        await refused("ALREADY_JOINED", controller_url=URL, token=token, ca_pin=pin,
                      host="h1", pki_dir=root, transports=nothing_asked)
        assert nothing_asked.asked == [] and store.current_credentials(root) == first
        again = await join_cluster(URL, token, pin, "h1", root, force=True,
                                   transports=Transports(a))
        assert again != first and store.current_credentials(root) == again


def test_what_the_controller_answers_is_checked_before_it_is_installed() -> None:
    now = utcnow()
    ca = pki.create_ca("lab", now)
    key = pki.generate_key()

    def issued(host: str, for_key: pki.PrivateKey, by: pki.CertificateAuthority
               ) -> IssuedCertificate:
        csr = pki.create_request(Identity.host(host), for_key)
        cert = pki.issue_host_certificate(by, csr, host, now)
        return IssuedCertificate(host=host, cert=pem.cert_to_pem(cert).decode(),
                                 ca_cert=pem.cert_to_pem(by.cert).decode(),
                                 not_after=cert.not_valid_after_utc)

    pin = tokens.ca_pin(ca.cert)
    assert checked_credentials(issued("h1", key, ca), key, "h1", pin, now).key is key
    for answer, code in [(issued("h1", pki.generate_key(), ca), "CERT_KEY_MISMATCH"),
                         (issued("h2", key, ca), "CERT_WRONG_HOST"),
                         (issued("h1", key, pki.create_ca("lab", now)), "CA_PIN_MISMATCH")]:
        with pytest.raises(SegueError) as err:
            checked_credentials(answer, key, "h1", pin, now)
        assert err.value.code == code


# ---- renewal ----

def host_client(a: Access, root: Path) -> ControllerClient:
    """The controller's client as a host's TLS presents its current certificate."""
    cert = store.current_credentials(root).cert.read_text()
    return ControllerClient(URL, transport=cert_transport(a.app, [cert]))


async def test_a_certificate_is_renewed_once_a_third_of_its_life_is_left(
        access: AccessFactory, tmp_path: Path) -> None:
    async with access() as a:
        root = tmp_path / "host-pki"
        first = await join_cluster(URL, *await ticket(a), "h1", root, transports=Transports(a))
        old = store.load_credentials(first)
        async with host_client(a, root) as client:
            assert await renew_if_due(root, client, utcnow() + timedelta(days=200)) is None
            assert store.current_credentials(root) == first
            renewed = await renew_if_due(root, client, utcnow() + timedelta(days=250))
        assert renewed is not None and store.current_credentials(root) == renewed
        new = store.load_credentials(renewed)
        assert new.cert.serial_number != old.cert.serial_number
        assert new.key.public_key() != old.key.public_key()  # a new key, made here
        assert pki.certificate_identity(new.cert) == Identity.host("h1")
        assert first.dir.is_dir()  # the previous set stays, for a reader that just took it
        async with host_client(a, root) as client:  # the new certificate is accepted
            assert await renew_if_due(root, client, utcnow(), force=True) is not None


async def test_a_failed_renewal_keeps_the_current_set(access: AccessFactory,
                                                      tmp_path: Path) -> None:
    async with access() as a:
        root = tmp_path / "host-pki"
        first = await join_cluster(URL, *await ticket(a), "h1", root, transports=Transports(a))
        stranger = pki.create_ca("lab", utcnow())
        csr = pki.create_request(Identity.host("h1"), pki.generate_key())
        foreign = pem.cert_to_pem(pki.issue_host_certificate(stranger, csr, "h1", utcnow()))
        async with ControllerClient(URL, transport=cert_transport(
                a.app, [foreign.decode()])) as client:
            with pytest.raises(SegueError) as err:
                await renew_if_due(root, client, utcnow(), force=True)
        assert err.value.code == "CERT_UNTRUSTED"
        assert store.current_credentials(root) == first
        with pytest.raises(SegueError) as err:
            await renew_if_due(tmp_path / "never-joined", client, utcnow())
        assert err.value.code == "CREDENTIALS_MISSING"


async def test_the_renewal_loop_renews_and_survives_failures(
        access: AccessFactory, tmp_path: Path) -> None:
    async with access() as a:
        root = tmp_path / "host-pki"
        first = await join_cluster(URL, *await ticket(a), "h1", root, transports=Transports(a))
        calls: list[str] = []

        def factory() -> ControllerClient:
            calls.append("client")
            if len(calls) == 1:
                raise OSError("the controller is away")  # logged, tried again
            return host_client(a, root)

        loop = credentials.run_renewals(root, factory, interval=0.01,
                                        clock=lambda: utcnow() + timedelta(days=250))
        with pytest.raises(TimeoutError):  # it runs until cancelled
            async with asyncio.timeout(1):
                await loop
        assert len(calls) >= 2 and store.current_credentials(root) != first


async def test_the_agent_renews_only_with_a_credential_directory(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from segue.agent.app import _start_renewals

    async with asyncio.TaskGroup() as tg:
        without = SimpleNamespace(controller_url=URL, pki_dir=None)  # no credential directory
        assert _start_renewals(tg, without) is None  # type: ignore[arg-type]
        with_dir = SimpleNamespace(controller_url=URL, pki_dir=tmp_path)
        task = _start_renewals(tg, with_dir)  # type: ignore[arg-type]
        assert task is not None and task.get_name() == "certificate-renewals"
        task.cancel()


# ---- the CLI: segue host token on the controller, segue agent join on the host ----

async def test_the_cli_prints_a_ticket_and_the_host_joins_with_it(
        access: AccessFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import functools

    from test_controller_inventory import LoopBridge
    from typer.testing import CliRunner

    from segue.cli.main import app as cli

    async with access() as a:
        bridge = LoopBridge(a.app, asyncio.get_running_loop())
        monkeypatch.setattr(ControllerClient, "from_env", classmethod(
            lambda cls, url=None, token=None: cls("unix:/run/segue/controller.sock",
                                                  transport=bridge)))
        monkeypatch.setattr(credentials, "join_cluster", functools.partial(
            credentials.join_cluster, transports=lambda verify: bridge))

        async def segue(*args: str, code: int = 0) -> str:
            result = await asyncio.to_thread(CliRunner().invoke, cli, list(args))
            assert result.exit_code == code, result.output
            return result.output

        out = await segue("host", "token", "h1", "--ttl", "10m")
        command = next(line for line in out.splitlines()
                       if line.startswith("segue agent join"))
        assert "--controller https://CONTROLLER:7700" in command  # no address known here
        assert f"--ca-pin {tokens.ca_pin(a.ca.cert)}" in command
        args = command.split()[1:]
        root = tmp_path / "host-pki"
        args[args.index("--pki-dir") + 1] = str(root)
        args[args.index("--controller") + 1] = URL
        assert "joined the cluster" in await segue(*args)
        cert = store.load_credentials(store.current_credentials(root)).cert
        assert pki.certificate_identity(cert) == Identity.host("h1")
        assert "JOIN_TOKEN_USED" in await segue(*args, "--force", code=1)
        assert "ALREADY_JOINED" in await segue(*args, code=1)
        assert "CLI_DURATION_INVALID" in await segue("host", "token", "h2", "--ttl", "1y",
                                                     code=1)
        assert "REQUEST_INVALID" in await segue("host", "token", "h2", "--ttl", "30d", code=1)
