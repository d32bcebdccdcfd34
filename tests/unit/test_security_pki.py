"""The cluster's PKI (``segue.security.pki``, ``segue.security.pem``): the CA, host and
controller certificates, and the identity a verified certificate proves."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from segue.domain.errors import SegueError
from segue.security import pem, pki
from segue.security.errors import (
    CertificateExpired,
    CertificateInvalid,
    CertificateUntrusted,
    PeerNotAllowed,
)
from segue.security.pki import CertificateAuthority, Identity, Role

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return pki.create_ca("lab", NOW)


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return pki.create_ca("lab", NOW)  # same name, another key: still another cluster


def host_cert(ca: CertificateAuthority, host: str = "host1", now: datetime = NOW,
              **kw: object) -> tuple[x509.Certificate, pki.PrivateKey]:
    key = pki.generate_key()
    csr = pki.create_request(Identity.host(host), key)
    return pki.issue_host_certificate(ca, csr, host, now, **kw), key  # type: ignore[arg-type]


def code(err: pytest.ExceptionInfo[SegueError]) -> str:
    return err.value.code


def ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension[
        x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


def test_the_ca_may_sign_certificates_only_directly(ca: CertificateAuthority) -> None:
    cert = ca.cert
    basic = ext(cert, x509.BasicConstraints)
    assert basic.critical and basic.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert isinstance(usage.value, x509.KeyUsage)
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert cert.not_valid_after_utc - NOW >= timedelta(days=3650)
    assert cert.subject == cert.issuer and ca.cluster == "lab"
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


@pytest.mark.parametrize("name", ["", "-lab", "a b", "é", "x" * 65])
def test_a_cluster_name_must_be_plain(name: str) -> None:
    with pytest.raises(CertificateInvalid) as err:
        pki.create_ca(name, NOW)
    assert code(err) == "CERT_NAME_INVALID"


def test_a_host_certificate_names_exactly_its_host(ca: CertificateAuthority) -> None:
    ip = ipaddress.ip_address("10.0.1.2")
    cert, key = host_cert(ca, ip_addresses=[ip])
    assert cert.subject.rfc4514_string() == "CN=host1,OU=host,O=lab"
    san = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert list(san) == [x509.UniformResourceIdentifier("segue://host/host1"),
                         x509.DNSName("host1"), x509.IPAddress(ip)]
    assert pki.verify_certificate(cert, ca.cert, NOW) == Identity(Role.HOST, "host1")
    pki.check_key_matches(cert, key)


def test_a_peer_certificate_serves_both_ends_for_qemu_and_openssl(
        ca: CertificateAuthority) -> None:
    cert, _ = host_cert(ca)
    assert ext(cert, x509.BasicConstraints).value == x509.BasicConstraints(False, None)
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and isinstance(usage.value, x509.KeyUsage)
    # QEMU < 10.0.7 wants keyEncipherment in a critical keyUsage, whatever the key type
    assert usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [  # type: ignore[call-overload]
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(ca.cert)
    assert cert.not_valid_after_utc - NOW == pki.CERT_VALIDITY
    assert NOW - cert.not_valid_before_utc == pki.CLOCK_SKEW


def test_validity_is_the_callers_choice_within_the_cas(ca: CertificateAuthority) -> None:
    cert, _ = host_cert(ca, validity=timedelta(days=7))
    assert cert.not_valid_after_utc == NOW + timedelta(days=7)
    late = NOW + timedelta(days=3600)
    cert, _ = host_cert(ca, now=late, validity=timedelta(days=365))
    assert cert.not_valid_after_utc == ca.cert.not_valid_after_utc
    with pytest.raises(ValueError, match="positive"):
        host_cert(ca, validity=timedelta(0))


def test_identities_made_by_hand_are_checked_too(ca: CertificateAuthority) -> None:
    key = pki.generate_key()
    for identity in (Identity(Role.HOST, "bad_name"), Identity(Role.CONTROLLER, "host1")):
        csr = pki.create_request(identity, key)
        with pytest.raises(CertificateInvalid) as err:
            pki.issue_certificate(ca, csr, identity, NOW)
        assert code(err) == "CERT_NAME_INVALID"


def test_the_controller_is_named_by_its_role(ca: CertificateAuthority) -> None:
    key = pki.generate_key()
    csr = pki.create_request(Identity.controller(), key)
    cert = pki.issue_controller_certificate(
        ca, csr, NOW, dns_names=["ctl.example.net"],
        ip_addresses=[ipaddress.ip_address("10.0.0.1")])
    assert cert.subject.rfc4514_string() == "CN=segue-controller,OU=controller,O=lab"
    san = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["segue://controller"]
    assert san.get_values_for_type(x509.DNSName) == ["segue-controller", "ctl.example.net"]
    identity = pki.verify_certificate(cert, ca.cert, NOW)
    assert identity == Identity.controller() and identity.uri == "segue://controller"
    pki.require_controller(identity)


def test_a_certificate_from_another_ca_is_untrusted(ca: CertificateAuthority,
                                                     other_ca: CertificateAuthority) -> None:
    cert, _ = host_cert(other_ca)
    with pytest.raises(CertificateUntrusted) as err:
        pki.verify_certificate(cert, ca.cert, NOW)
    assert code(err) == "CERT_UNTRUSTED"
    assert err.value.kind == "unauthenticated"


def test_an_expired_foreign_certificate_is_still_untrusted(
        ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    cert, _ = host_cert(other_ca, validity=timedelta(days=1))
    with pytest.raises(CertificateUntrusted):
        pki.verify_certificate(cert, ca.cert, NOW + timedelta(days=2))


def test_a_certificate_outside_its_validity_is_refused(ca: CertificateAuthority) -> None:
    cert, _ = host_cert(ca, validity=timedelta(days=1))
    assert pki.verify_certificate(cert, ca.cert, NOW + timedelta(hours=23)).name == "host1"
    with pytest.raises(CertificateExpired) as err:
        pki.verify_certificate(cert, ca.cert, NOW + timedelta(days=1, seconds=1))
    assert code(err) == "CERT_EXPIRED"
    with pytest.raises(CertificateExpired) as err:
        pki.verify_certificate(cert, ca.cert, NOW - timedelta(hours=1))
    assert code(err) == "CERT_NOT_YET_VALID"


def test_an_expired_ca_trusts_nothing(ca: CertificateAuthority) -> None:
    short = pki.create_ca("lab", NOW, validity=timedelta(days=30))
    cert, _ = host_cert(short, validity=timedelta(days=365))
    with pytest.raises(CertificateExpired) as err:
        pki.verify_certificate(cert, short.cert, NOW + timedelta(days=31))
    assert "CA" in err.value.message


def test_a_host_cannot_certify_another_host(ca: CertificateAuthority) -> None:
    cert, key = host_cert(ca)
    rogue_ca = CertificateAuthority(cert, key)  # a host's certificate is no CA (pathlen 0)
    forged = pki.issue_certificate(rogue_ca, pki.create_request(Identity.host("host2"), key),
                                   Identity.host("host2"), NOW)
    with pytest.raises(CertificateUntrusted):
        pki.verify_certificate(forged, ca.cert, NOW)


def test_the_ca_certificate_is_no_peer(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateUntrusted):
        pki.verify_certificate(ca.cert, ca.cert, NOW)


def test_a_certificate_must_name_one_identity(ca: CertificateAuthority) -> None:
    key = pki.generate_key()
    names = [x509.UniformResourceIdentifier("segue://host/host1"),
             x509.UniformResourceIdentifier("segue://controller"), x509.DNSName("host1")]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "host1")]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256()))
    with pytest.raises(CertificateInvalid) as err:
        pki.verify_certificate(cert, ca.cert, NOW)
    assert code(err) == "CERT_INVALID"


def test_peers_are_authorized_by_role_and_host() -> None:
    host1, controller = Identity.host("host1"), Identity.controller()
    pki.require_host(host1, "host1")
    with pytest.raises(PeerNotAllowed) as err:
        pki.require_host(host1, "host2")
    assert code(err) == "CERT_WRONG_HOST" and err.value.kind == "forbidden"
    with pytest.raises(PeerNotAllowed) as err:
        pki.require_host(controller, "host1")
    assert code(err) == "CERT_WRONG_ROLE"
    with pytest.raises(PeerNotAllowed) as err:
        pki.require_controller(host1)
    assert code(err) == "CERT_WRONG_ROLE"


@pytest.mark.parametrize("name", ["", "host_1", "-h", "h-", "a..b", "segue-controller",
                                  "x" * 64, "hôte", "h/1"])
def test_a_host_name_must_be_a_dns_name(name: str) -> None:
    with pytest.raises(CertificateInvalid) as err:
        Identity.host(name)
    assert code(err) == "CERT_NAME_INVALID"


def test_identity_uris_round_trip() -> None:
    for identity in (Identity.host("h1.rack-2"), Identity.controller()):
        assert Identity.from_uri(identity.uri) == identity
    for uri in ("segue://host/", "segue://host/a_b", "segue://host/segue-controller",
                "https://controller", "segue://admin"):
        with pytest.raises(CertificateInvalid):
            Identity.from_uri(uri)


def test_a_host_certificate_takes_no_other_names(ca: CertificateAuthority) -> None:
    key = pki.generate_key()
    csr = pki.create_request(Identity.host("host1"), key)
    for extra in (["segue-controller"], ["host2"]):
        with pytest.raises(CertificateInvalid) as err:
            pki.issue_certificate(ca, csr, Identity.host("host1"), NOW, dns_names=extra)
        assert code(err) == "CERT_NAME_INVALID"


def test_a_request_is_for_its_own_host_only(ca: CertificateAuthority) -> None:
    csr = pki.create_request(Identity.host("host2"), pki.generate_key())
    with pytest.raises(CertificateInvalid) as err:
        pki.issue_host_certificate(ca, csr, "host1", NOW)
    assert code(err) == "CSR_INVALID"


def test_a_request_must_be_signed_by_its_ecdsa_key(ca: CertificateAuthority) -> None:
    der = pki.create_request(Identity.host("host1"), pki.generate_key()).public_bytes(
        Encoding.DER)
    tampered = x509.load_der_x509_csr(der[:-1] + bytes([der[-1] ^ 1]))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "host1")]))
               .sign(rsa_key, hashes.SHA256()))
    p384 = pki.create_request(Identity.host("host1"),
                              ec.generate_private_key(ec.SECP384R1()))  # type: ignore[arg-type]
    for csr in (tampered, rsa_csr, p384):
        with pytest.raises(CertificateInvalid) as err:
            pki.issue_host_certificate(ca, csr, "host1", NOW)
        assert code(err) == "CSR_INVALID"


def test_renewal_is_due_in_the_last_third_by_default(ca: CertificateAuthority) -> None:
    cert, _ = host_cert(ca, validity=timedelta(days=300))
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    due = cert.not_valid_after_utc - lifetime / 3
    assert not pki.needs_renewal(cert, due - timedelta(seconds=1))
    assert pki.needs_renewal(cert, due)
    assert pki.needs_renewal(cert, NOW + timedelta(days=400))
    assert not pki.needs_renewal(cert, NOW + timedelta(days=250), margin=timedelta(days=30))
    assert pki.needs_renewal(cert, NOW + timedelta(days=271), margin=timedelta(days=30))


def test_a_naive_time_is_a_bug(ca: CertificateAuthority) -> None:
    cert, _ = host_cert(ca)
    with pytest.raises(ValueError, match="naive"):
        pki.verify_certificate(cert, ca.cert, datetime(2030, 1, 1))


def test_the_peer_certificate_of_a_tls_session(ca: CertificateAuthority) -> None:
    cert, _ = host_cert(ca)
    der = cert.public_bytes(Encoding.DER)
    assert pki.verify_peer(der, ca.cert, NOW) == Identity.host("host1")
    with pytest.raises(CertificateInvalid):
        pki.verify_peer(b"not DER", ca.cert, NOW)


def test_pem_round_trips_in_the_formats_qemu_reads(ca: CertificateAuthority) -> None:
    cert, key = host_cert(ca)
    key_pem = pem.key_to_pem(key)
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    assert pem.key_from_pem(key_pem).private_numbers() == key.private_numbers()
    cert_pem = pem.cert_to_pem(cert)
    assert cert_pem.startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert pem.cert_from_pem(cert_pem) == cert
    assert pem.certs_from_pem(cert_pem + pem.cert_to_pem(ca.cert)) == [cert, ca.cert]
    csr = pki.create_request(Identity.host("host1"), key)
    assert pem.csr_from_pem(pem.csr_to_pem(csr)) == csr


def test_pem_refuses_what_it_cannot_use(ca: CertificateAuthority) -> None:
    cert, _ = host_cert(ca)
    both = pem.cert_to_pem(cert) + pem.cert_to_pem(ca.cert)
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    cases = [(pem.cert_from_pem, both, "CERT_INVALID"), (pem.cert_from_pem, b"x", "CERT_INVALID"),
             (pem.key_from_pem, b"x", "CERT_INVALID"), (pem.key_from_pem, rsa_pem, "CERT_INVALID"),
             (pem.csr_from_pem, b"x", "CSR_INVALID")]
    for parse, data, expected in cases:
        with pytest.raises(CertificateInvalid) as err:
            parse(data)  # type: ignore[operator]
        assert code(err) == expected


def test_a_certificate_for_another_key_is_refused(ca: CertificateAuthority) -> None:
    cert, _ = host_cert(ca)
    with pytest.raises(CertificateInvalid) as err:
        pki.check_key_matches(cert, pki.generate_key())
    assert code(err) == "CERT_KEY_MISMATCH"


def test_qemu_names_a_peer_by_its_subject_in_certificate_order(
        ca: CertificateAuthority) -> None:
    cert, _ = host_cert(ca, "host2")
    dn = ",".join(f"{a.rfc4514_attribute_name}={a.value}" for a in cert.subject)
    assert pki.qemu_authz_identity("lab", Identity.host("host2")) == dn
    assert dn == "O=lab,OU=host,CN=host2"  # as QEMU 10.0 with GnuTLS 3.7 logs a refusal
