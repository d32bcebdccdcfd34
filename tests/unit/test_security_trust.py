"""Trust bundles, revocation and the CA's rotation on disk (``segue.security.pki``,
``revocation``, ``store``, ``ca_rotation``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from segue.security import ca_rotation, pem, pki, revocation, store
from segue.security.errors import (
    CARotationRefused,
    CertificateExpired,
    CertificateInvalid,
    CertificateRevoked,
    CertificateUntrusted,
)
from segue.security.pki import CertificateAuthority, Identity
from segue.security.revocation import Revocations, RevokedCertificate
from segue.security.store import Credentials

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def issue(ca: CertificateAuthority, name: str = "h1",
          now: datetime = NOW) -> tuple[pki.PrivateKey, pki.x509.Certificate]:
    key = pki.generate_key()
    identity = Identity.host(name)
    return key, pki.issue_certificate(ca, pki.create_request(identity, key), identity, now)


@pytest.fixture
def cas() -> tuple[CertificateAuthority, CertificateAuthority]:
    return pki.create_ca("lab", NOW), pki.create_ca("lab", NOW, common_name="Segue cluster CA 2")


def test_a_certificate_verifies_against_any_ca_of_a_bundle(cas: tuple[CertificateAuthority,
                                                                      CertificateAuthority]
                                                           ) -> None:
    old, new = cas
    _, on_old = issue(old)
    _, on_new = issue(new)
    for cert in (on_old, on_new):
        assert pki.verify_certificate(cert, [old.cert, new.cert], NOW) == Identity.host("h1")
        assert pki.issuer_in(cert, [old.cert, new.cert]) in (old.cert, new.cert)
    assert pki.issuer_in(on_new, [old.cert, new.cert]) == new.cert
    with pytest.raises(CertificateUntrusted):
        pki.verify_certificate(on_old, [new.cert], NOW)
    with pytest.raises(CertificateExpired):
        pki.verify_certificate(on_new, [old.cert, new.cert], NOW + timedelta(days=400))
    with pytest.raises(ValueError):
        pki.verify_certificate(on_new, [], NOW)


def test_the_crl_lists_revoked_serials_and_only_its_ca_signs_it(
        cas: tuple[CertificateAuthority, CertificateAuthority]) -> None:
    old, new = cas
    _, revoked = issue(old)
    _, kept = issue(old, "h2")
    entry = RevokedCertificate(revoked.serial_number, "h1", NOW, "stolen")
    crls = [revocation.build_crl(ca, [entry], NOW) for ca in (old, new)]
    parsed = revocation.crls_from_pem(revocation.crls_to_pem(crls))
    assert len(parsed) == 2
    revocation.check_crls_signed(parsed, [old.cert, new.cert])
    with pytest.raises(CertificateInvalid):
        revocation.check_crls_signed(parsed, [old.cert])  # the new CA's is not the cluster's
    with pytest.raises(CertificateRevoked) as err:
        revocation.check_crl(revoked, parsed, [old.cert, new.cert])
    assert err.value.code == "CERT_REVOKED"
    revocation.check_crl(kept, parsed, [old.cert, new.cert])
    # a CRL signed by another key with the same name is ignored
    forged = revocation.build_crl(pki.create_ca("lab", NOW), [entry], NOW)
    revocation.check_crl(revoked, [forged], [old.cert])
    assert revocation.crls_from_pem(b"") == []
    with pytest.raises(CertificateInvalid):
        revocation.crls_from_pem(b"-----BEGIN X509 CRL-----\nnope\n-----END X509 CRL-----\n")


def test_revocations_refuse_revoked_serials_and_old_certificates_of_a_revoked_host(
        cas: tuple[CertificateAuthority, CertificateAuthority]) -> None:
    old, _ = cas
    _, first = issue(old)
    _, other = issue(old, "h2")
    revoked = Revocations()
    revoked.add([RevokedCertificate(first.serial_number, "h1", NOW)])
    with pytest.raises(CertificateRevoked):
        revoked.check(first, Identity.host("h1"))
    revoked.check(other, Identity.host("h2"))
    _, unrecorded = issue(old, now=NOW)  # issued before the cutoff, its serial unknown
    revoked.revoke_host("h1", NOW + timedelta(minutes=1))
    assert revoked.is_host_revoked("h1")
    with pytest.raises(CertificateRevoked):
        revoked.check(unrecorded, Identity.host("h1"))
    _, rejoined = issue(old, now=NOW + timedelta(hours=1))
    revoked.check(rejoined, Identity.host("h1"))  # issued after the cutoff
    revoked.readmit_host("h1")
    revoked.check(unrecorded, Identity.host("h1"))
    with pytest.raises(CertificateRevoked):
        revoked.check(first, Identity.host("h1"))  # its serial stays revoked


def test_a_set_holds_the_bundle_and_a_new_trust_makes_a_new_set(
        tmp_path: Path, cas: tuple[CertificateAuthority, CertificateAuthority]) -> None:
    old, new = cas
    key, cert = issue(old)
    first = store.install_credentials(tmp_path, Credentials(key, cert, old.cert), NOW)
    assert first.dir.name == f"creds-{cert.serial_number:x}"
    store.install_crl(tmp_path, b"crl")
    assert not store.install_crl(tmp_path, b"crl")
    bundled = store.install_credentials(
        tmp_path, Credentials(key, cert, old.cert, (new.cert,)), NOW)
    assert bundled.dir != first.dir
    assert (bundled.dir / store.CA_CRL).read_bytes() == b"crl"  # carried over
    assert store.load_trust(bundled) == [old.cert, new.cert]
    loaded = store.load_credentials(bundled)
    assert loaded.ca_cert == old.cert and loaded.extra_cas == (new.cert,)
    assert len(pem.certs_from_pem(bundled.ca_cert.read_bytes())) == 2
    # a certificate the bundle does not trust is never installed
    foreign_key, foreign = issue(pki.create_ca("other", NOW))
    with pytest.raises(CertificateUntrusted):
        store.install_credentials(tmp_path, Credentials(foreign_key, foreign, new.cert), NOW)
    assert store.current_credentials(tmp_path) == bundled


def test_a_rotation_keeps_both_cas_until_it_finishes(tmp_path: Path) -> None:
    first = store.init_cluster(tmp_path, "lab", NOW)
    cas = ca_rotation.load_cas(tmp_path)
    assert not cas.rotating and cas.issuing.cert == first.cert and cas.trust == [first.cert]
    with pytest.raises(CARotationRefused) as err:
        ca_rotation.finish_rotation(tmp_path)
    assert err.value.code == "CA_ROTATION_NOT_STARTED"
    started = ca_rotation.start_rotation(tmp_path, NOW)
    assert started.next is not None and started.next.cluster == "lab"
    assert started.next.cert.subject != first.cert.subject
    cas = ca_rotation.load_cas(tmp_path)
    assert cas.rotating and cas.issuing.cert == started.next.cert
    assert cas.trust == [first.cert, started.next.cert]
    with pytest.raises(CARotationRefused) as err:
        ca_rotation.start_rotation(tmp_path, NOW)
    assert err.value.code == "CA_ROTATION_IN_PROGRESS"
    assert ca_rotation.load_cas(tmp_path).issuing.cert == started.next.cert  # unchanged
    new = ca_rotation.finish_rotation(tmp_path)
    assert new.cert == started.next.cert
    cas = ca_rotation.load_cas(tmp_path)
    assert not cas.rotating and cas.trust == [new.cert]
    assert store.load_ca(tmp_path).cert == new.cert
    retired = tmp_path / "ca" / f"ca-retired-{first.cert.serial_number:x}-key.pem"
    assert pem.key_from_pem(retired.read_bytes()).public_key() == first.key.public_key()


def test_a_finish_cut_short_still_trusts_both_and_finishing_again_completes_it(
        tmp_path: Path) -> None:
    first = store.init_cluster(tmp_path, "lab", NOW)
    nxt = ca_rotation.start_rotation(tmp_path, NOW).next
    assert nxt is not None
    ca_dir = tmp_path / "ca"
    # as if the finish stopped after writing the new key over the old one
    store.write_file_atomic(ca_dir / "ca-key.pem", pem.key_to_pem(nxt.key), 0o600)
    cas = ca_rotation.load_cas(tmp_path)
    assert cas.issuing.cert == nxt.cert and cas.trust == [first.cert, nxt.cert]
    assert ca_rotation.finish_rotation(tmp_path).cert == nxt.cert
    assert ca_rotation.load_cas(tmp_path).trust == [nxt.cert]
