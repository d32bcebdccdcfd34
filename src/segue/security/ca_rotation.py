"""The cluster CA's rotation on disk: a new CA beside the old one, then the old one retired.

Files of ``<root>/ca`` (``segue.security.store``)::

    ca-cert.pem, ca-key.pem            the CA (before and after a rotation)
    ca-next-cert.pem, ca-next-key.pem  the new CA, while a rotation runs
    ca-retired-<serial>-cert.pem       an old CA, once its rotation finished (kept: a
    ca-retired-<serial>-key.pem        backup, never read)

A rotation runs while both ``ca-next-*`` files are there. Then the cluster trusts both CAs
(``ClusterCAs.trust``, the bundle, old first) and the new one issues
(``ClusterCAs.issuing``); ``ca-cert.pem`` stays the CA a join ticket pins and the
controller's certificate is of, until the rotation finishes.

``start_rotation`` writes the new key, then its certificate: a crash between leaves a key
alone, which is no rotation, and the next start replaces it. ``finish_rotation`` keeps the
old CA as ``ca-retired-*``, writes the new key then the new certificate over
``ca-key.pem``/``ca-cert.pem``, then removes ``ca-next-cert.pem`` and ``ca-next-key.pem``:
until ``ca-next-cert.pem`` is gone the rotation still runs (the new CA issues, both are
trusted), so a crash at any step leaves a cluster that works, and finishing again
completes it.

Errors: ``CredentialsMissing`` (``CA_MISSING``), ``CARotationRefused``
(``CA_ROTATION_IN_PROGRESS``, ``CA_ROTATION_NOT_STARTED``), what ``store`` raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from segue.security import pem, pki, store
from segue.security.errors import (
    CA_ROTATION_IN_PROGRESS,
    CA_ROTATION_NOT_STARTED,
    CARotationRefused,
)
from segue.security.pki import CertificateAuthority
from segue.security.store import (
    CA_CERT,
    CA_DIR,
    CA_KEY,
    NEXT_CA_CERT,
    NEXT_CA_KEY,
    PRIVATE_MODE,
    PUBLIC_MODE,
    RETIRED_PREFIX,
    storage,
    write_file_atomic,
)


@dataclass(frozen=True)
class ClusterCAs:
    """The cluster's CAs as they are on disk: ``current`` (``ca-cert.pem``) and, while a
    rotation runs, ``next``."""

    current: CertificateAuthority
    next: CertificateAuthority | None

    @property
    def rotating(self) -> bool:
        return self.next is not None

    @property
    def issuing(self) -> CertificateAuthority:
        """The CA that issues certificates: the new one while a rotation runs."""
        return self.next or self.current

    @property
    def trust(self) -> list[x509.Certificate]:
        """The trust bundle: the CA, and the new one while a rotation runs."""
        return store.unique_certs([self.current.cert, *([self.next.cert] if self.next else [])])


def load_cas(root: Path) -> ClusterCAs:
    """The cluster's CAs under ``root/ca``. Raises CredentialsMissing (``CA_MISSING``),
    CredentialStorageUnavailable, CertificateInvalid."""
    ca_dir = root / CA_DIR
    nxt = (store.read_ca_pair(ca_dir, NEXT_CA_CERT, NEXT_CA_KEY) if _rotating(ca_dir)
           else None)
    if nxt is None:
        return ClusterCAs(store.load_ca(root), None)
    # mid-finish, ca-key.pem may already be the new key: the old CA is then trusted only
    current_cert = pem.cert_from_pem(storage((ca_dir / CA_CERT).read_bytes, ca_dir))
    key_pem = storage((ca_dir / CA_KEY).read_bytes, ca_dir)
    return ClusterCAs(CertificateAuthority(current_cert, pem.key_from_pem(key_pem)), nxt)


def start_rotation(root: Path, now: datetime) -> ClusterCAs:
    """Make a new CA for the same cluster and keep it as ``ca-next-*`` (see the module doc).
    Raises CARotationRefused (``CA_ROTATION_IN_PROGRESS``) while a rotation runs,
    CredentialsMissing (``CA_MISSING``) without a CA; nothing is changed then."""
    cas = load_cas(root)
    if cas.next is not None:
        raise CARotationRefused(
            CA_ROTATION_IN_PROGRESS, "a CA rotation is already running (a new CA "
            f"{cas.next.cert.serial_number:x} is beside the old one)",
            "see it with segue cluster rotate-ca --status; finish it with --finish")
    name = f"{pki.CA_COMMON_NAME} {now:%Y-%m-%d %H:%M:%S}"
    new = pki.create_ca(cas.current.cluster, now, common_name=name)
    ca_dir = root / CA_DIR

    def write() -> None:
        write_file_atomic(ca_dir / NEXT_CA_KEY, pem.key_to_pem(new.key), PRIVATE_MODE)
        write_file_atomic(ca_dir / NEXT_CA_CERT, pem.cert_to_pem(new.cert), PUBLIC_MODE)

    storage(write, ca_dir)
    return ClusterCAs(cas.current, new)


def finish_rotation(root: Path) -> CertificateAuthority:
    """Make the new CA the only one (see the module doc) and return it. Raises
    CARotationRefused (``CA_ROTATION_NOT_STARTED``) when no rotation runs."""
    cas = load_cas(root)
    if cas.next is None:
        raise CARotationRefused(CA_ROTATION_NOT_STARTED, "no CA rotation is running",
                                "start one with segue cluster rotate-ca")
    new, old, ca_dir = cas.next, cas.current, root / CA_DIR

    def write() -> None:
        retired = f"{RETIRED_PREFIX}{old.cert.serial_number:x}"
        if old.cert.public_key() == old.key.public_key():  # else finished half already
            write_file_atomic(ca_dir / f"{retired}-key.pem", pem.key_to_pem(old.key),
                              PRIVATE_MODE)
            write_file_atomic(ca_dir / f"{retired}-cert.pem", pem.cert_to_pem(old.cert),
                              PUBLIC_MODE)
        write_file_atomic(ca_dir / CA_KEY, pem.key_to_pem(new.key), PRIVATE_MODE)
        write_file_atomic(ca_dir / CA_CERT, pem.cert_to_pem(new.cert), PUBLIC_MODE)
        (ca_dir / NEXT_CA_CERT).unlink()
        (ca_dir / NEXT_CA_KEY).unlink()

    storage(write, ca_dir)
    return new


def _rotating(ca_dir: Path) -> bool:
    return (ca_dir / NEXT_CA_CERT).is_file() and (ca_dir / NEXT_CA_KEY).is_file()
