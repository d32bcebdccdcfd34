"""Credential directories: where the cluster's CA and a peer's key and certificates live on
disk, laid out so that QEMU's ``tls-creds-x509`` reads a peer's set as it is.

Layout of a root directory (``/var/lib/segue/pki`` on a host; the controller has its own)::

    <root>/                       0700
      ca/                         0700, the controller's only (``save_ca``)
        ca-cert.pem               0644  the cluster's CA certificate
        ca-key.pem                0600  the cluster's CA key: the keys to the cluster
      current -> creds-<serial>   symlink to the set in use, swapped atomically on rotation
      creds-<serial>/             0700, one complete set, never changed once in place
        ca-cert.pem               0644  the cluster's CA certificate (the peers' trust)
        server-cert.pem           0644  this peer's certificate
        server-key.pem            0600  its private key
        client-cert.pem           0644  the same certificate, and
        client-key.pem            0600  the same key, for QEMU's client endpoint

A set is QEMU's x509 directory as it is: a migration's destination adds
``tls-creds-x509,endpoint=server,verify-peer=on,dir=<set>`` (QEMU reads ``ca-cert.pem``,
``server-cert.pem``, ``server-key.pem``), its source ``endpoint=client`` (``ca-cert.pem``,
``client-cert.pem``, ``client-key.pem``). Pass the set's real path
(``CredentialPaths.dir``), not ``current``: QEMU opens the files one by one, and a rotation
between two opens must not hand it a key of one set and a certificate of another. Files are
owned by the agent's user (root), who runs QEMU.

Rotation (``install_credentials``) writes a new set under a temporary name, fsyncs it,
renames it into place, then points ``current`` at it with one ``rename`` of a symlink:
readers see the old set or the new one, whole. The set ``current`` left and no other is
kept, for a reader that resolved it just before. A running QEMU read its credentials when
its TLS object was made and never reads them again: rotation needs no VM restart, and the
next migration's TLS objects (made per migration) read the new set. Keys are made where they
are used and never leave their machine; every key file is written 0600 before it has a
byte in it.

Errors (``segue.security.errors``): ``CredentialsMissing`` (``CA_MISSING``,
``CREDENTIALS_MISSING``), ``CAExists`` (``CA_EXISTS``), ``CredentialStorageUnavailable``
(``PKI_STORAGE_UNAVAILABLE``), and what ``pki``/``pem`` raise for files that are not the
cluster's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from segue.security import pem, pki
from segue.security.errors import (
    CA_EXISTS,
    CA_MISSING,
    CREDENTIALS_MISSING,
    PKI_STORAGE_UNAVAILABLE,
    CAExists,
    CredentialsMissing,
    CredentialStorageUnavailable,
)
from segue.security.pki import CertificateAuthority, Identity, IPAddress, PrivateKey

CA_DIR = "ca"
CURRENT = "current"
SET_PREFIX = "creds-"
CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
CA_CRL = "ca-crl.pem"
NEXT_CA_CERT = "ca-next-cert.pem"
NEXT_CA_KEY = "ca-next-key.pem"
RETIRED_PREFIX = "ca-retired-"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client-cert.pem"
CLIENT_KEY = "client-key.pem"
PUBLIC_MODE = 0o644
PRIVATE_MODE = 0o600
DIR_MODE = 0o700
T = TypeVar("T")


@dataclass(frozen=True)
class CredentialPaths:
    """One credential set on disk (``dir`` is its real path: QEMU's x509 ``dir``)."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / CA_CERT

    @property
    def cert(self) -> Path:
        return self.dir / SERVER_CERT

    @property
    def key(self) -> Path:
        return self.dir / SERVER_KEY


@dataclass(frozen=True)
class Credentials:
    """A peer's key, its certificate and the cluster's CA certificate, in memory;
    ``extra_cas``: the other CAs this peer trusts (during a CA rotation: the old or the new
    one), written after ``ca_cert`` in the set's ``ca-cert.pem``."""

    key: PrivateKey
    cert: x509.Certificate
    ca_cert: x509.Certificate
    extra_cas: tuple[x509.Certificate, ...] = ()

    @property
    def trust(self) -> list[x509.Certificate]:
        """Every CA this peer trusts, ``ca_cert`` first, each once."""
        return unique_certs([self.ca_cert, *self.extra_cas])


def unique_certs(certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """``certs`` in order, each certificate once."""
    seen: dict[bytes, x509.Certificate] = {}
    for cert in certs:
        seen.setdefault(cert.fingerprint(hashes.SHA256()), cert)
    return list(seen.values())


def bundle_digest(certs: Sequence[x509.Certificate]) -> str:
    """A short digest naming a trust bundle (the same CAs in any order give the same)."""
    prints = sorted(c.fingerprint(hashes.SHA256()) for c in unique_certs(certs))
    return hashlib.sha256(b"".join(prints)).hexdigest()[:12]


def write_file_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` with permissions exactly ``mode`` (umask aside), so that readers see
    the old file or the new one: a temporary file made with ``mode`` before any byte is in
    it, fsynced, renamed over ``path``, the directory fsynced. Raises OSError."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)
            out.flush()
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_ca(root: Path, ca: CertificateAuthority) -> None:
    """Keep the cluster's CA in ``root/ca``. Raises CAExists (``CA_EXISTS``) if a CA is
    there already (it is never overwritten), CredentialStorageUnavailable."""
    ca_dir = root / CA_DIR

    def write() -> None:
        _make_dir(root)
        _make_dir(ca_dir)
        if (ca_dir / CA_KEY).exists() or (ca_dir / CA_CERT).exists():
            raise CAExists(CA_EXISTS, f"a cluster CA is already in {ca_dir}",
                           "a cluster has one CA: keep it, or remove the directory to start "
                           "a new cluster (every host must then join again)")
        write_file_atomic(ca_dir / CA_KEY, pem.key_to_pem(ca.key), PRIVATE_MODE)
        write_file_atomic(ca_dir / CA_CERT, pem.cert_to_pem(ca.cert), PUBLIC_MODE)

    storage(write, ca_dir)


def load_ca(root: Path) -> CertificateAuthority:
    """The cluster's CA kept in ``root/ca``. Raises CredentialsMissing (``CA_MISSING``),
    CredentialStorageUnavailable, CertificateInvalid (unreadable files, or a key that is not
    the certificate's)."""
    ca_dir = root / CA_DIR
    if not (ca_dir / CA_KEY).exists():
        raise CredentialsMissing(CA_MISSING, f"no cluster CA in {ca_dir}",
                                 "create the cluster first: segue cluster init")
    return read_ca_pair(ca_dir, CA_CERT, CA_KEY)


def read_ca_pair(ca_dir: Path, cert_file: str, key_file: str) -> CertificateAuthority:
    """A CA from its certificate and key files in ``ca_dir`` (the current one, or the next
    during a rotation). Raises CredentialStorageUnavailable, CertificateInvalid (unreadable
    files, or a key that is not the certificate's)."""
    cert_pem, key_pem = storage(lambda: ((ca_dir / cert_file).read_bytes(),
                                         (ca_dir / key_file).read_bytes()), ca_dir)
    ca = CertificateAuthority(pem.cert_from_pem(cert_pem), pem.key_from_pem(key_pem))
    pki.check_key_matches(ca.cert, ca.key)
    return ca


def install_credentials(root: Path, creds: Credentials, now: datetime) -> CredentialPaths:
    """Make ``creds`` the set in use under ``root`` (first install and rotation alike: see
    the module doc) and return its paths. Checked first, so that a set that would fail every
    handshake is never installed: the certificate must be the key's
    (``CERT_KEY_MISMATCH``) and verify against the CA at ``now`` (``pki.verify_certificate``
    raises). Raises CredentialStorageUnavailable when the directory cannot be written."""
    pki.check_key_matches(creds.cert, creds.key)
    pki.verify_certificate(creds.cert, creds.trust, now)
    return storage(lambda: _install(root, set_name(creds), creds), root)


def set_name(creds: Credentials) -> str:
    """``creds-<serial>``, or ``creds-<serial>-<bundle digest>`` when the set trusts more
    CAs than its certificate's (the same certificate under a new trust is a new set)."""
    name = f"{SET_PREFIX}{creds.cert.serial_number:x}"
    trust = creds.trust
    if len(trust) == 1 and pki.issuer_in(creds.cert, trust) is not None:
        return name
    return f"{name}-{bundle_digest(trust)}"


def current_credentials(root: Path) -> CredentialPaths:
    """The set in use under ``root``, by its real path. Raises CredentialsMissing
    (``CREDENTIALS_MISSING``) when none is installed."""
    link = root / CURRENT
    target = storage(lambda: link.resolve() if link.is_symlink() else None, root)
    if target is None or not target.is_dir():
        raise CredentialsMissing(CREDENTIALS_MISSING, f"no credentials installed in {root}",
                                 "join the cluster first: segue agent join")
    return CredentialPaths(target)


def load_credentials(paths: CredentialPaths) -> Credentials:
    """The key and certificates of the set at ``paths`` (``ca_cert``: the CA of its
    ``ca-cert.pem`` that issued the certificate, else the first; the others are
    ``extra_cas``). Raises CredentialStorageUnavailable, CertificateInvalid (files that are
    not PEM)."""
    key_pem, cert_pem, ca_pem = storage(
        lambda: (paths.key.read_bytes(), paths.cert.read_bytes(), paths.ca_cert.read_bytes()),
        paths.dir)
    cert = pem.cert_from_pem(cert_pem)
    cas = unique_certs(pem.certs_from_pem(ca_pem))
    ca_cert = pki.issuer_in(cert, cas) or cas[0]
    return Credentials(pem.key_from_pem(key_pem), cert, ca_cert,
                       tuple(c for c in cas if c is not ca_cert))


def load_trust(paths: CredentialPaths) -> list[x509.Certificate]:
    """The CA certificates the set at ``paths`` trusts (its ``ca-cert.pem``). Raises
    CredentialStorageUnavailable, CertificateInvalid."""
    return unique_certs(pem.certs_from_pem(storage(paths.ca_cert.read_bytes, paths.dir)))


def install_crl(root: Path, crl_pem: bytes) -> bool:
    """Keep ``crl_pem`` as ``ca-crl.pem`` of the set in use (replaced atomically, the one
    file of a set that changes in place: QEMU reads it when it makes a TLS object); later
    sets carry it over. True if it changed. Raises CredentialsMissing,
    CredentialStorageUnavailable."""
    target = current_credentials(root).dir / CA_CRL

    def write() -> bool:
        if target.exists() and target.read_bytes() == crl_pem:
            return False
        write_file_atomic(target, crl_pem, PUBLIC_MODE)
        return True

    return storage(write, root)


def init_cluster(root: Path, cluster: str, now: datetime, *,
                 validity: timedelta = pki.CERT_VALIDITY, dns_names: Sequence[str] = (),
                 ip_addresses: Sequence[IPAddress] = ()) -> CertificateAuthority:
    """What ``segue cluster init`` does on the controller: a new CA for ``cluster`` kept in
    ``root/ca``, and the controller's own key and certificate (reachable at ``dns_names``
    and ``ip_addresses``) installed as ``root``'s set. Raises what ``save_ca`` and
    ``install_credentials`` raise; CAExists leaves everything as it was (a failure after the
    CA was kept leaves the CA: remove ``root`` to start again)."""
    ca = pki.create_ca(cluster, now)
    key = pki.generate_key()
    cert = pki.issue_controller_certificate(ca, pki.create_request(Identity.controller(), key),
                                            now, validity=validity, dns_names=dns_names,
                                            ip_addresses=ip_addresses)
    save_ca(root, ca)
    install_credentials(root, Credentials(key, cert, ca.cert), now)
    return ca


def _install(root: Path, name: str, creds: Credentials) -> CredentialPaths:
    _make_dir(root)
    final = root / name
    link = root / CURRENT
    previous = link.resolve() if link.is_symlink() else None
    if not final.is_dir():  # else the same certificate (serial) is installed already
        crl = previous / CA_CRL if previous is not None else None
        _write_set(root / f".{name}.tmp", creds,
                   crl.read_bytes() if crl is not None and crl.is_file() else None)
        os.rename(root / f".{name}.tmp", final)
    new_link = root / f".{CURRENT}.tmp"
    new_link.unlink(missing_ok=True)
    new_link.symlink_to(name)
    os.replace(new_link, link)
    _fsync_dir(root)
    _prune(root, keep={final, previous})
    return CredentialPaths(final.resolve())


def _write_set(tmp: Path, creds: Credentials, crl: bytes | None) -> None:
    if tmp.exists():  # left by a crash
        shutil.rmtree(tmp)
    tmp.mkdir(mode=DIR_MODE)
    os.chmod(tmp, DIR_MODE)
    cert_pem, key_pem = pem.cert_to_pem(creds.cert), pem.key_to_pem(creds.key)
    for file, data, mode in ((SERVER_KEY, key_pem, PRIVATE_MODE),
                             (CLIENT_KEY, key_pem, PRIVATE_MODE),
                             (SERVER_CERT, cert_pem, PUBLIC_MODE),
                             (CLIENT_CERT, cert_pem, PUBLIC_MODE),
                             (CA_CERT, b"".join(pem.cert_to_pem(c) for c in creds.trust),
                              PUBLIC_MODE),
                             *([(CA_CRL, crl, PUBLIC_MODE)] if crl is not None else [])):
        write_file_atomic(tmp / file, data, mode)


def _prune(root: Path, keep: set[Path | None]) -> None:
    """Remove every set but ``keep`` (and temporaries of crashed installs)."""
    kept = {p.resolve() for p in keep if p is not None}
    for entry in root.iterdir():
        is_set = entry.name.startswith((SET_PREFIX, f".{SET_PREFIX}"))
        if is_set and entry.is_dir() and not entry.is_symlink() and entry.resolve() not in kept:
            shutil.rmtree(entry)


def _make_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(mode=DIR_MODE, parents=True)
        os.chmod(path, DIR_MODE)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage(action: Callable[[], T], where: Path) -> T:
    """``action()``, its OSError raised as CredentialStorageUnavailable naming ``where``."""
    try:
        return action()
    except OSError as err:
        raise CredentialStorageUnavailable(
            PKI_STORAGE_UNAVAILABLE, f"cannot use the credential directory {where}: {err}",
            "check that the directory exists, is writable by segue and its disk has "
            "room") from err
