"""``segue cluster init``: offline, it makes the cluster's CA and the controller's
credentials once, prints the CA pin, and refuses to make a second CA."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography.x509.oid import ExtensionOID
from typer.testing import CliRunner

from segue.cli.main import app as cli
from segue.security import pki, store, tokens
from segue.security.pki import Identity

CONFIG = 'database_url = "sqlite:////tmp/c.db"\npki_dir = "{}"\n[listen]\naddress = "10.0.0.2"\n'


def segue(*args: str, code: int = 0) -> str:
    out = CliRunner().invoke(cli, list(args))
    assert out.exit_code == code, out.output
    return out.output


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_init_makes_the_ca_and_the_controllers_credentials(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    out = segue("cluster", "init", "prod", "--pki-dir", str(root), "--address",
                "segue.example.org", "--address", "10.1.2.3")
    ca = store.load_ca(root)
    assert ca.cluster == "prod" and f"CA pin: {tokens.ca_pin(ca.cert)}" in out
    assert (root / "ca" / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert os.stat(root).st_mode & 0o777 == 0o700
    creds = store.load_credentials(store.current_credentials(root))
    now = datetime.now(UTC)
    assert pki.verify_certificate(creds.cert, ca.cert, now) == Identity.controller()
    san = str(creds.cert.extensions.get_extension_for_oid(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value)
    assert "segue.example.org" in san and "10.1.2.3" in san


def test_a_second_init_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    segue("cluster", "init", "prod", "--pki-dir", str(root))
    before = files(root)
    out = segue("cluster", "init", "other", "--pki-dir", str(root), code=1)
    assert "CA_EXISTS" in out and "remove the directory" in out
    assert files(root) == before


def test_init_reads_the_pki_dir_and_address_of_the_controllers_config(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    config = tmp_path / "controller.toml"
    config.write_text(CONFIG.format(root))
    segue("cluster", "init", "prod", "--config", str(config))
    cert = store.load_credentials(store.current_credentials(root)).cert
    assert "10.0.0.2" in str(cert.extensions.get_extension_for_oid(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value)


def test_init_without_a_directory_or_with_bad_names_makes_nothing(tmp_path: Path) -> None:
    assert "CLI_PKI_DIR_MISSING" in segue("cluster", "init", "prod", code=1)
    config = tmp_path / "controller.toml"
    config.write_text('database_url = "sqlite:////tmp/c.db"\n[listen]\naddress = "10.0.0.2"\n')
    assert "CLI_PKI_DIR_MISSING" in segue("cluster", "init", "prod", "--config", str(config),
                                          code=1)
    root = tmp_path / "pki"
    assert "CERT_NAME_INVALID" in segue("cluster", "init", "a cluster", "--pki-dir",
                                        str(root), code=1)
    assert "CERT_NAME_INVALID" in segue("cluster", "init", "prod", "--pki-dir", str(root),
                                        "--address", "bad_name", code=1)
    assert not root.exists()
