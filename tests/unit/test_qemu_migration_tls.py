"""Encrypted migrations, the pure parts: the QMP commands of each side
(``segue.qemu.migration_tls``), the identity the destination admits
(``segue.agent.migtls``) and the pre-migration check (``MIGRATION_TLS_UNAVAILABLE``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from checks_factory import codes, ctx, facts, host

from segue.agent import migtls
from segue.agent.config import AgentConfig
from segue.checks.network import check_migration_network
from segue.domain.errors import InvalidRequest, Unavailable
from segue.qemu.migration_tls import (
    DestinationTls,
    SourceTls,
    destination_commands,
    object_ids,
    source_commands,
    teardown_commands,
    tls_objects,
    uses_tls,
)
from segue.security import pki, store
from segue.security.pki import Identity
from segue.security.store import Credentials

MID = "0b8f7e52-2c1e-4d53-9a52-0d7a3c6f1e11"
CREDS, AUTHZ = f"segue-tls-{MID}", f"segue-authz-{MID}"


def test_the_source_loads_its_client_credentials_and_names_the_destination() -> None:
    assert source_commands(SourceTls(MID, "/pki/creds-1f", "host2")) == [
        ("object-add", {"qom-type": "tls-creds-x509", "id": CREDS, "endpoint": "client",
                        "dir": "/pki/creds-1f", "verify-peer": True}),
        ("migrate-set-parameters", {"tls-creds": CREDS, "tls-hostname": "host2",
                                    "tls-authz": ""}),
    ]


def test_the_destination_requires_a_client_certificate_and_admits_the_source_only() -> None:
    dn = "O=lab,OU=host,CN=host1"
    assert destination_commands(DestinationTls(MID, "/pki/creds-2a", dn)) == [
        ("object-add", {"qom-type": "tls-creds-x509", "id": CREDS, "endpoint": "server",
                        "dir": "/pki/creds-2a", "verify-peer": True}),
        ("object-add", {"qom-type": "authz-simple", "id": AUTHZ, "identity": dn}),
        ("migrate-set-parameters", {"tls-creds": CREDS, "tls-authz": AUTHZ,
                                    "tls-hostname": ""}),
    ]


def test_teardown_clears_the_parameters_first_then_deletes_authz_before_creds() -> None:
    found = [{"name": "rng0", "type": "child<rng-random>"},
             {"name": CREDS, "type": "child<tls-creds-x509>"},
             {"name": AUTHZ, "type": "child<authz-simple>"},
             {"name": "segue-tls-old", "type": "child<tls-creds-x509>"}]
    assert teardown_commands(found) == [
        ("migrate-set-parameters", {"tls-creds": "", "tls-hostname": "", "tls-authz": ""}),
        ("object-del", {"id": AUTHZ}),
        ("object-del", {"id": CREDS}),
        ("object-del", {"id": "segue-tls-old"}),  # an earlier migration's leftover
    ]
    assert tls_objects([{"name": "rng0"}]) == []
    assert teardown_commands([]) == [("migrate-set-parameters", {
        "tls-creds": "", "tls-hostname": "", "tls-authz": ""})]


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "m;1", "ü"])
def test_a_migration_id_qemu_cannot_take_is_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        object_ids(bad)
    assert exc.value.code == "MIGRATION_ID_INVALID" and exc.value.hint


def test_uses_tls_reads_tls_creds() -> None:
    assert uses_tls({"tls-creds": CREDS}) and not uses_tls({"tls-creds": ""})
    assert not uses_tls({})


# ---- the agent's side: its credential set and the source's DN ----
def joined_host(tmp_path: Path, name: str, cluster: str = "lab") -> AgentConfig:
    now = datetime.now(UTC)
    ca = store.init_cluster(tmp_path / "controller", cluster, now)
    key = pki.generate_key()
    cert = pki.issue_host_certificate(ca, pki.create_request(Identity.host(name), key), name,
                                      now)
    store.install_credentials(tmp_path / name, Credentials(key, cert, ca.cert), now)
    return AgentConfig(host=name, state_dir=tmp_path / f"{name}-state",
                       pki_dir=tmp_path / name)


def test_a_joined_host_names_its_real_set_and_the_source_by_its_dn(tmp_path: Path) -> None:
    config = joined_host(tmp_path, "host2", cluster="prod-eu")
    commands = migtls.destination_setup(config, MID, "host1")
    creds_dir = store.current_credentials(tmp_path / "host2").dir
    assert commands[0][1]["dir"] == str(creds_dir) and "current" not in str(creds_dir)
    assert commands[1][1]["identity"] == "O=prod-eu,OU=host,CN=host1"
    assert migtls.source_setup(config, MID, "host3")[1][1]["tls-hostname"] == "host3"


def test_a_peer_that_is_no_host_name_is_refused(tmp_path: Path) -> None:
    config = joined_host(tmp_path, "host2")
    with pytest.raises(InvalidRequest) as exc:
        migtls.destination_setup(config, MID, "segue-controller")
    assert exc.value.code == "CERT_NAME_INVALID"


@pytest.mark.parametrize("joined", [False, True])
def test_a_host_without_credentials_cannot_encrypt(tmp_path: Path, joined: bool) -> None:
    pki_dir = tmp_path / "empty" if joined else None  # a pki_dir with nothing installed
    config = AgentConfig(host="host2", state_dir=tmp_path / "s", pki_dir=pki_dir)
    with pytest.raises(Unavailable) as exc:
        migtls.source_setup(config, MID, "host1")
    assert exc.value.code == "MIGRATION_TLS_UNAVAILABLE"
    assert "segue agent join" in exc.value.hint and "--no-tls" in exc.value.hint


# ---- the pre-migration check ----
def tls_host(name: str, tls: bool) -> object:
    return host(name, migration=dict(facts(name)["migration"]) | {"tls": tls})


def test_an_encrypted_migration_needs_credentials_on_both_hosts() -> None:
    both = ctx(source=tls_host("host1", True), dest=tls_host("host2", True), tls=True)
    results = check_migration_network(both)
    assert codes(results) == ["NETWORK_OK"] and results[0].facts["tls"] is True
    lacking = ctx(source=tls_host("host1", True), dest=tls_host("host2", False), tls=True)
    results = check_migration_network(lacking)
    assert codes(results) == ["MIGRATION_TLS_UNAVAILABLE"]
    assert results[0].severity == "error" and results[0].facts["host"] == "host2"
    assert "--no-tls" in results[0].hint and "segue agent join" in results[0].hint
    neither = ctx(source=tls_host("host1", False), dest=tls_host("host2", False), tls=True)
    assert [r.facts["host"] for r in check_migration_network(neither)] == ["host1", "host2"]


def test_a_plain_migration_needs_no_credentials() -> None:
    plain = ctx(source=tls_host("host1", False), dest=tls_host("host2", False), tls=False)
    assert codes(check_migration_network(plain)) == ["NETWORK_OK"]
