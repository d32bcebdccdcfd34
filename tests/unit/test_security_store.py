"""Credential directories (``segue.security.store``): the layout QEMU reads, file modes,
atomic rotation, and a host's join from token to installed certificate."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from segue.security import pem, pki, store, tokens
from segue.security.errors import (
    CAExists,
    CertificateInvalid,
    CertificateUntrusted,
    CredentialsMissing,
    CredentialStorageUnavailable,
)
from segue.security.pki import CertificateAuthority, Identity, Role
from segue.security.store import Credentials

NOW = datetime(2030, 1, 1, tzinfo=UTC)
QEMU_FILES = {"ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem",
              "client-key.pem"}


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def host_creds(ca: CertificateAuthority, host: str = "host1", now: datetime = NOW,
               validity: timedelta = pki.CERT_VALIDITY) -> Credentials:
    key = pki.generate_key()
    cert = pki.issue_host_certificate(ca, pki.create_request(Identity.host(host), key), host,
                                      now, validity=validity)
    return Credentials(key, cert, ca.cert)


def test_cluster_init_keeps_the_ca_and_the_controllers_set(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    ca = store.init_cluster(root, "lab", NOW, dns_names=["ctl.example.net"])
    assert mode(root) == 0o700 and mode(root / "ca") == 0o700
    assert mode(root / "ca" / "ca-key.pem") == 0o600
    assert mode(root / "ca" / "ca-cert.pem") == 0o644
    loaded = store.load_ca(root)
    assert loaded.cert == ca.cert
    assert loaded.key.private_numbers() == ca.key.private_numbers()
    paths = store.current_credentials(root)
    creds = store.load_credentials(paths)
    assert pki.verify_certificate(creds.cert, ca.cert, NOW) == Identity.controller()
    assert creds.ca_cert == ca.cert


def test_a_set_is_qemus_x509_directory(tmp_path: Path) -> None:
    store.init_cluster(tmp_path, "lab", NOW)
    paths = store.current_credentials(tmp_path)
    assert paths.dir.parent == tmp_path.resolve() and paths.dir.name.startswith("creds-")
    assert {p.name for p in paths.dir.iterdir()} == QEMU_FILES
    assert mode(paths.dir) == 0o700
    for name in QEMU_FILES:
        assert mode(paths.dir / name) == (0o600 if name.endswith("-key.pem") else 0o644)
    assert (paths.dir / "client-cert.pem").read_bytes() == paths.cert.read_bytes()
    assert (paths.dir / "client-key.pem").read_bytes() == paths.key.read_bytes()
    assert paths.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert os.readlink(tmp_path / "current") == paths.dir.name  # relative: the tree can move


def test_a_cluster_has_one_ca(tmp_path: Path) -> None:
    ca = store.init_cluster(tmp_path, "lab", NOW)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.pem")}
    with pytest.raises(CAExists) as err:
        store.init_cluster(tmp_path, "lab", NOW)
    assert err.value.code == "CA_EXISTS"
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.pem")} == before
    assert store.load_ca(tmp_path).cert == ca.cert


def test_missing_credentials_are_named(tmp_path: Path) -> None:
    with pytest.raises(CredentialsMissing) as err:
        store.load_ca(tmp_path)
    assert err.value.code == "CA_MISSING"
    with pytest.raises(CredentialsMissing) as err:
        store.current_credentials(tmp_path)
    assert err.value.code == "CREDENTIALS_MISSING"


def test_a_host_joins_with_a_token_and_keeps_its_key(tmp_path: Path) -> None:
    ca = store.init_cluster(tmp_path / "controller", "lab", NOW)
    ticket, record = tokens.new_join_token(ca.cert, NOW, host="host1")
    # the host: its own key and request; the controller: the token, then the certificate
    key = pki.generate_key()
    csr_pem = pem.csr_to_pem(pki.create_request(Identity.host("host1"), key))
    record = tokens.redeem_join_token(record, ticket.token, "host1", NOW)
    cert = pki.issue_host_certificate(store.load_ca(tmp_path / "controller"),
                                      pem.csr_from_pem(csr_pem), record.used_by or "",
                                      NOW)
    # the host again: the CA it was given is the pinned one, the certificate is its own
    tokens.check_ca_pin(ca.cert, ticket.ca_pin)
    identity = pki.verify_certificate(cert, ca.cert, NOW)
    pki.require_host(identity, "host1")
    paths = store.install_credentials(tmp_path / "host1", Credentials(key, cert, ca.cert), NOW)
    assert store.load_credentials(paths).key.private_numbers() == key.private_numbers()
    assert identity == Identity(Role.HOST, "host1")


def test_rotation_swaps_whole_sets_and_keeps_the_previous_one(tmp_path: Path) -> None:
    ca = pki.create_ca("lab", NOW)
    first = store.install_credentials(tmp_path, host_creds(ca), NOW)
    second = store.install_credentials(tmp_path, host_creds(ca), NOW)
    assert store.current_credentials(tmp_path) == second != first
    assert first.dir.is_dir()  # a reader that resolved `current` just before still reads it
    third = store.install_credentials(tmp_path, host_creds(ca), NOW)
    assert not first.dir.exists() and second.dir.is_dir()
    assert store.current_credentials(tmp_path) == third
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["current", second.dir.name, third.dir.name])


def test_installing_the_same_certificate_again_changes_nothing(tmp_path: Path) -> None:
    creds = host_creds(pki.create_ca("lab", NOW))
    first = store.install_credentials(tmp_path, creds, NOW)
    assert store.install_credentials(tmp_path, creds, NOW) == first
    assert store.current_credentials(tmp_path) == first


def test_what_would_fail_every_handshake_is_never_installed(tmp_path: Path) -> None:
    ca, other = pki.create_ca("lab", NOW), pki.create_ca("lab", NOW)
    good = store.install_credentials(tmp_path, host_creds(ca), NOW)
    creds = host_creds(ca)
    foreign = host_creds(other)
    cases = [(Credentials(pki.generate_key(), creds.cert, ca.cert), CertificateInvalid),
             (Credentials(creds.key, creds.cert, other.cert), CertificateUntrusted),
             (Credentials(foreign.key, foreign.cert, ca.cert), CertificateUntrusted)]
    for bad, error in cases:
        with pytest.raises(error):
            store.install_credentials(tmp_path, bad, NOW)
    expired = host_creds(ca, validity=timedelta(days=1))
    with pytest.raises(Exception, match="CERT_EXPIRED"):
        store.install_credentials(tmp_path, expired, NOW + timedelta(days=2))
    assert store.current_credentials(tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["current", good.dir.name])


def test_leftovers_of_a_crashed_install_are_cleared(tmp_path: Path) -> None:
    ca = pki.create_ca("lab", NOW)
    crashed = tmp_path / ".creds-abc.tmp"
    crashed.mkdir()
    (crashed / "server-key.pem").write_bytes(b"half")
    (tmp_path / ".current.tmp").symlink_to("nowhere")
    paths = store.install_credentials(tmp_path, host_creds(ca), NOW)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["current", paths.dir.name])


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_files_get_exactly_their_mode_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        store.write_file_atomic(tmp_path / "k.pem", b"secret", 0o600)
        store.write_file_atomic(tmp_path / "c.pem", b"public", 0o644)
        store.write_file_atomic(tmp_path / "k.pem", b"secret2", 0o600)
    finally:
        os.umask(old)
    assert mode(tmp_path / "k.pem") == 0o600 and mode(tmp_path / "c.pem") == 0o644
    assert (tmp_path / "k.pem").read_bytes() == b"secret2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pem", "k.pem"]


def test_a_directory_that_cannot_be_written_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    root.write_text("a file where the directory should be")
    ca = pki.create_ca("lab", NOW)
    with pytest.raises(CredentialStorageUnavailable) as err:
        store.install_credentials(root, host_creds(ca), NOW)
    assert err.value.code == "PKI_STORAGE_UNAVAILABLE" and err.value.kind == "unavailable"
    with pytest.raises(CredentialStorageUnavailable):
        store.save_ca(root, ca)
