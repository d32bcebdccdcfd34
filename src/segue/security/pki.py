"""The cluster's PKI: its CA, the certificates of the controller and of the hosts, and the
identity a certificate proves.

Keys are ECDSA P-256 with SHA-256 signatures everywhere: OpenSSL (Python's ``ssl``, for the
controller's and agents' HTTPS) and GnuTLS (QEMU's ``tls-creds-x509``, for the migration
stream) both accept them. Everything is PEM: certificates, PKCS#8 keys (unencrypted; the
file mode protects them, ``segue.security.store``), PKCS#10 signing requests.

The CA (``create_ca``) is self-signed: subject ``CN=Segue cluster CA, O=<cluster>``;
basicConstraints CA:true, pathlen 0 (critical); keyUsage keyCertSign, cRLSign (critical);
a subject key identifier; valid ``CA_VALIDITY`` (10 years). Its key stays on the controller.

A peer's certificate (``issue_certificate``) is made from a signing request that the peer
made with its own key (``create_request``): the private key never leaves the peer, and only
the request's public key is taken from it; the subject and the extensions are the CA's:

- subject ``CN=<name>, OU=<role>, O=<cluster>``;
- subjectAltName: the identity URI, ``segue://controller`` or ``segue://host/<name>``,
  then DNS ``<name>``, then any extra DNS names and IP addresses (the controller's address,
  a host's migration address);
- basicConstraints CA:false (critical); keyUsage digitalSignature, keyEncipherment
  (critical): QEMU before 10.0.7 refuses a certificate whose critical keyUsage lacks
  keyEncipherment, even with an EC key, which never uses it; extendedKeyUsage serverAuth
  and clientAuth: every peer is both (the controller calls the agents and takes their
  heartbeats; a host's QEMU is a migration server or client, and QEMU's x509 directory wants
  the one certificate as ``server-cert.pem`` and ``client-cert.pem``);
- authority and subject key identifiers;
- valid from ``CLOCK_SKEW`` (5 minutes) before it was issued, for ``CERT_VALIDITY`` (1 year)
  unless asked otherwise.

Identity: the one ``segue://`` URI of the subjectAltName says who the certificate is for
(``Identity``: role and name), as a SPIFFE ID does; the controller's name is always
``segue-controller``, which no host may take. ``verify_certificate`` is what the controller
and the agents use to authorize a peer: the certificate must chain to the cluster's CA (and
be an end entity with clientAuth, by the ``cryptography`` verifier's web PKI rules), be
within its validity, and name exactly one identity whose DNS name and CN agree with it;
``require_host``/``require_controller`` then check it is the peer a request needs.
QEMU checks a migration's peer itself: the source with ``tls-hostname`` (the destination's
host name, against its DNS name), the destination with ``tls-authz`` (an ``authz-simple``
naming the source: ``qemu_authz_identity``).

Errors: ``segue.security.errors`` (``CertificateInvalid``, ``CertificateUntrusted``,
``CertificateExpired``, ``PeerNotAllowed``). A naive ``datetime`` is a programming error
and raises ``ValueError``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from segue.security.errors import (
    CERT_EXPIRED,
    CERT_INVALID,
    CERT_KEY_MISMATCH,
    CERT_NAME_INVALID,
    CERT_NOT_YET_VALID,
    CERT_UNTRUSTED,
    CERT_WRONG_HOST,
    CERT_WRONG_ROLE,
    CSR_INVALID,
    CertificateExpired,
    CertificateInvalid,
    CertificateUntrusted,
    PeerNotAllowed,
)

CA_VALIDITY = timedelta(days=3652)
CERT_VALIDITY = timedelta(days=365)
CLOCK_SKEW = timedelta(minutes=5)
CA_COMMON_NAME = "Segue cluster CA"
CONTROLLER_NAME = "segue-controller"
URI_PREFIX = "segue://"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PrivateKey = ec.EllipticCurvePrivateKey


class Role(StrEnum):
    CONTROLLER = "controller"
    HOST = "host"


@dataclass(frozen=True)
class Identity:
    """Who a certificate is for: the controller, or one host by name."""

    role: Role
    name: str

    @classmethod
    def host(cls, name: str) -> Identity:
        """The identity of host ``name``; raises CertificateInvalid (``CERT_NAME_INVALID``)
        unless it is a DNS host name (letters, digits, '-' in dot-separated labels) other
        than ``segue-controller``."""
        check_host_name(name)
        return cls(Role.HOST, name)

    @classmethod
    def controller(cls) -> Identity:
        return cls(Role.CONTROLLER, CONTROLLER_NAME)

    @property
    def uri(self) -> str:
        """``segue://controller`` or ``segue://host/<name>``."""
        if self.role is Role.CONTROLLER:
            return f"{URI_PREFIX}controller"
        return f"{URI_PREFIX}host/{self.name}"

    @classmethod
    def from_uri(cls, uri: str) -> Identity:
        """The identity a ``segue://`` URI names; raises CertificateInvalid (``CERT_INVALID``)."""
        if uri == f"{URI_PREFIX}controller":
            return cls.controller()
        prefix = f"{URI_PREFIX}host/"
        name = uri.removeprefix(prefix)
        if uri.startswith(prefix) and _HOST_NAME.fullmatch(name) and name != CONTROLLER_NAME:
            return cls(Role.HOST, name)
        raise CertificateInvalid(CERT_INVALID, f"{uri!r} is not a Segue identity",
                                 "a certificate names segue://controller or segue://host/<name>")


@dataclass(frozen=True)
class CertificateAuthority:
    """The cluster's CA: its certificate and its private key (the controller's only)."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cluster(self) -> str:
        """The cluster's name (the organization of the CA's subject)."""
        return cluster_name(self.cert)


def cluster_name(ca_cert: x509.Certificate) -> str:
    """The name of the cluster whose CA ``ca_cert`` is (its subject's organization; "" if
    it names none)."""
    return _name_attribute(ca_cert.subject, NameOID.ORGANIZATION_NAME)


def check_host_name(name: str) -> None:
    """Raise CertificateInvalid (``CERT_NAME_INVALID``) unless ``name`` can name a host in a
    certificate (see ``Identity.host``)."""
    if len(name) > 253 or not _HOST_NAME.fullmatch(name) or name == CONTROLLER_NAME:
        raise CertificateInvalid(
            CERT_NAME_INVALID, f"{name!r} cannot name a host in a certificate",
            "use letters, digits and '-' in dot-separated labels of up to 63 characters "
            f"(and not {CONTROLLER_NAME!r})", host=name)


def require_aware(now: datetime) -> None:
    """Raise ValueError for a naive ``now``: every time here is timezone-aware."""
    if now.tzinfo is None:
        raise ValueError("a naive datetime: use an aware one (datetime.now(UTC))")


def generate_key() -> PrivateKey:
    """A new ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def create_ca(cluster: str, now: datetime, validity: timedelta = CA_VALIDITY,
              key: PrivateKey | None = None,
              common_name: str = CA_COMMON_NAME) -> CertificateAuthority:
    """A new cluster CA named ``cluster``, valid from ``now`` for ``validity`` (see the
    module doc); a rotation's new CA gets another ``common_name`` so that the two CAs of a
    trust bundle (and their CRLs) have distinct names. Raises CertificateInvalid
    (``CERT_NAME_INVALID``) for a cluster name that is not 1-64 letters, digits, '.', '_'
    or '-'."""
    require_aware(now)
    if not _CLUSTER_NAME.fullmatch(cluster):
        raise CertificateInvalid(CERT_NAME_INVALID, f"{cluster!r} cannot name a cluster",
                                 "use 1-64 letters, digits, '.', '_' or '-'", cluster=cluster)
    key = key or generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = _key_usage(key_cert_sign=True, crl_sign=True)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return CertificateAuthority(cert, key)


def create_request(identity: Identity, key: PrivateKey) -> x509.CertificateSigningRequest:
    """The signing request a peer sends to be certified as ``identity``, signed with its own
    ``key`` (which it keeps)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.name)])
    return (x509.CertificateSigningRequestBuilder().subject_name(subject)
            .sign(key, hashes.SHA256()))


def issue_certificate(ca: CertificateAuthority, csr: x509.CertificateSigningRequest,
                      identity: Identity, now: datetime, *, validity: timedelta = CERT_VALIDITY,
                      dns_names: Sequence[str] = (),
                      ip_addresses: Sequence[IPAddress] = ()) -> x509.Certificate:
    """The certificate of ``identity`` for the key of ``csr``, signed by ``ca``, valid from
    ``now`` for ``validity`` but never beyond the CA (see the module doc for its contents).
    Raises
    CertificateInvalid: ``CSR_INVALID`` when the request's signature is bad, its key is not
    ECDSA P-256 or its CN (if any) is not the identity's name; ``CERT_NAME_INVALID`` for
    extra DNS names on a host's certificate (it names its own host only), or one that is not
    a host name. The caller takes ``ip_addresses`` from its own records, never from the
    peer: a certificate with another host's address would let its holder pass for it."""
    require_aware(now)
    if validity <= timedelta(0):
        raise ValueError(f"a certificate's validity must be positive, not {validity}")
    public_key = _checked_request_key(csr, identity)
    _check_names(identity, dns_names)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri),
                                     x509.DNSName(identity.name)]
    names += [x509.DNSName(d) for d in dns_names if d != identity.name]
    names += [x509.IPAddress(ip) for ip in ip_addresses]
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.cluster),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role),
                         x509.NameAttribute(NameOID.COMMON_NAME, identity.name)])
    usage = _key_usage(digital_signature=True, key_encipherment=True)
    purposes = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                      ExtendedKeyUsageOID.CLIENT_AUTH])
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(ca.cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(now + validity, ca.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(purposes, critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                           critical=False)
            .sign(ca.key, hashes.SHA256()))


def issue_host_certificate(ca: CertificateAuthority, csr: x509.CertificateSigningRequest,
                           host: str, now: datetime, *, validity: timedelta = CERT_VALIDITY,
                           ip_addresses: Sequence[IPAddress] = ()) -> x509.Certificate:
    """The certificate of host ``host`` (``issue_certificate`` for ``Identity.host``)."""
    return issue_certificate(ca, csr, Identity.host(host), now, validity=validity,
                             ip_addresses=ip_addresses)


def issue_controller_certificate(ca: CertificateAuthority,
                                 csr: x509.CertificateSigningRequest, now: datetime, *,
                                 validity: timedelta = CERT_VALIDITY,
                                 dns_names: Sequence[str] = (),
                                 ip_addresses: Sequence[IPAddress] = ()) -> x509.Certificate:
    """The controller's certificate (``issue_certificate`` for ``Identity.controller``);
    ``dns_names`` and ``ip_addresses`` are the addresses agents and users reach it at."""
    return issue_certificate(ca, csr, Identity.controller(), now, validity=validity,
                             dns_names=dns_names, ip_addresses=ip_addresses)


def certificate_identity(cert: x509.Certificate) -> Identity:
    """The identity ``cert`` claims, trusting nothing (``verify_certificate`` checks it).
    Raises CertificateInvalid (``CERT_INVALID``) unless it names exactly one ``segue://``
    identity whose name is also its CN and one of its DNS names."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(URI_PREFIX)]
    if len(uris) != 1:
        raise CertificateInvalid(CERT_INVALID,
                                 f"the certificate names {len(uris)} Segue identities, not 1",
                                 "use a certificate issued by the cluster's CA")
    identity = Identity.from_uri(uris[0])
    cn = _name_attribute(cert.subject, NameOID.COMMON_NAME)
    if cn != identity.name or identity.name not in san.get_values_for_type(x509.DNSName):
        raise CertificateInvalid(CERT_INVALID,
                                 f"the certificate of {identity.uri} has CN {cn!r}",
                                 "use a certificate issued by the cluster's CA")
    return identity


TrustAnchors = x509.Certificate | Sequence[x509.Certificate]


def trust_list(trust: TrustAnchors) -> list[x509.Certificate]:
    """``trust`` as a list of CA certificates (one CA, or a bundle during a CA rotation)."""
    return [trust] if isinstance(trust, x509.Certificate) else list(trust)


def issuer_in(cert: x509.Certificate, trust: TrustAnchors) -> x509.Certificate | None:
    """The CA of ``trust`` that signed ``cert`` (None: none of them), trusting nothing else."""
    return next((ca for ca in trust_list(trust) if _issued_by(cert, ca)), None)


def verify_certificate(cert: x509.Certificate, trust: TrustAnchors,
                       now: datetime) -> Identity:
    """The identity of ``cert`` once it is proven: issued by a CA of ``trust`` (the
    cluster's CA, or during a CA rotation the old and the new one), an end entity
    certificate with clientAuth, valid at ``now``, naming one identity. Raises
    CertificateUntrusted (``CERT_UNTRUSTED``) for a certificate no CA of ``trust`` issued,
    CertificateExpired (``CERT_EXPIRED``, ``CERT_NOT_YET_VALID``) for one of them outside its
    validity (or when its CA is), CertificateInvalid (``CERT_INVALID``) for one without a
    proper identity; ValueError for an empty ``trust``."""
    require_aware(now)
    anchors = trust_list(trust)
    if not anchors:
        raise ValueError("no CA to verify against")
    verifier = PolicyBuilder().store(Store(anchors)).time(now).build_client_verifier()
    try:
        verifier.verify(cert, [])
    except VerificationError as err:
        issuer = issuer_in(cert, anchors)
        if issuer is not None:
            _check_validity(issuer, now, "the cluster's CA")
            _check_validity(cert, now, "the certificate")
        raise CertificateUntrusted(
            CERT_UNTRUSTED, f"the certificate of {cert.subject.rfc4514_string()!r} is not "
            f"trusted by the cluster's CA: {err}",
            "use a certificate issued by this cluster's CA (join the host again)") from err
    return certificate_identity(cert)


def verify_peer(der: bytes, trust: TrustAnchors, now: datetime) -> Identity:
    """``verify_certificate`` for a TLS peer's certificate as DER
    (``SSLSocket.getpeercert(binary_form=True)``); CertificateInvalid if it does not parse."""
    return verify_certificate(load_der_certificate(der), trust, now)


def load_der_certificate(der: bytes) -> x509.Certificate:
    """The certificate in ``der``; CertificateInvalid (``CERT_INVALID``) if it does not
    parse."""
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as err:
        raise CertificateInvalid(CERT_INVALID, f"the peer's certificate does not parse: {err}",
                                 "use a certificate issued by the cluster's CA") from err


def require_controller(identity: Identity) -> None:
    """Raise PeerNotAllowed (``CERT_WRONG_ROLE``) unless ``identity`` is the controller."""
    if identity.role is not Role.CONTROLLER:
        raise PeerNotAllowed(CERT_WRONG_ROLE,
                             f"{identity.uri} is not the controller: only it may ask this",
                             "send this through the controller", peer=identity.uri)


def require_host(identity: Identity, host: str) -> None:
    """Raise PeerNotAllowed unless ``identity`` is host ``host``: ``CERT_WRONG_ROLE`` for the
    controller, ``CERT_WRONG_HOST`` for another host."""
    if identity.role is not Role.HOST:
        raise PeerNotAllowed(CERT_WRONG_ROLE, f"{identity.uri} is not host {host!r}",
                             "only a host speaks for itself here", peer=identity.uri)
    if identity.name != host:
        raise PeerNotAllowed(CERT_WRONG_HOST,
                             f"host {identity.name!r} may not speak for host {host!r}",
                             "a host reports only about itself, with its own certificate",
                             peer=identity.uri, host=host)


def check_key_matches(cert: x509.Certificate, key: PrivateKey) -> None:
    """Raise CertificateInvalid (``CERT_KEY_MISMATCH``) unless ``cert`` certifies ``key``."""
    if cert.public_key() != key.public_key():
        raise CertificateInvalid(CERT_KEY_MISMATCH,
                                 f"the certificate of {cert.subject.rfc4514_string()!r} is "
                                 "for another key than this one",
                                 "install the certificate issued for this key's request")


def qemu_authz_identity(cluster: str, identity: Identity) -> str:
    """The distinguished name QEMU's ``authz-simple`` compares with the certificate of
    ``identity`` in ``cluster`` (``O=<cluster>,OU=<role>,CN=<name>``: GnuTLS's
    ``gnutls_x509_crt_get_dn``, in the certificate's order). A migration's destination
    names the source host's this way as its ``tls-authz``, and accepts no other peer. The
    names allowed here need no escaping."""
    return f"O={cluster},OU={identity.role},CN={identity.name}"


def needs_renewal(cert: x509.Certificate, now: datetime,
                  margin: timedelta | None = None) -> bool:
    """True when ``cert`` expires within ``margin`` of ``now`` (or has expired); the
    default margin is a third of the certificate's lifetime (4 months of a year)."""
    require_aware(now)
    if margin is None:
        margin = (cert.not_valid_after_utc - cert.not_valid_before_utc) / 3
    return now >= cert.not_valid_after_utc - margin


def _checked_request_key(csr: x509.CertificateSigningRequest,
                         identity: Identity) -> ec.EllipticCurvePublicKey:
    hint = "make the request with segue's own tools (an ECDSA P-256 key, CN the host name)"
    if not csr.is_signature_valid:
        raise CertificateInvalid(CSR_INVALID, "the signing request's signature is invalid", hint)
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                        ec.SECP256R1):
        raise CertificateInvalid(CSR_INVALID, "the signing request's key is not ECDSA P-256",
                                 hint)
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if any(a.value != identity.name for a in cns):
        raise CertificateInvalid(CSR_INVALID, f"the signing request is for "
                                 f"{', '.join(str(a.value) for a in cns)}, not {identity.name}",
                                 hint, host=identity.name)
    return key


def _check_names(identity: Identity, dns_names: Sequence[str]) -> None:
    if identity.role is Role.HOST:
        check_host_name(identity.name)
    elif identity.name != CONTROLLER_NAME:
        raise CertificateInvalid(CERT_NAME_INVALID, f"the controller is {CONTROLLER_NAME!r}, "
                                 f"not {identity.name!r}", "use Identity.controller()")
    extra = [d for d in dns_names if d != identity.name]
    if extra and identity.role is Role.HOST:
        raise CertificateInvalid(CERT_NAME_INVALID,
                                 f"host {identity.name!r} cannot also be {', '.join(extra)}",
                                 "a host's certificate names its own host only",
                                 host=identity.name)
    for name in extra:
        check_host_name(name)


def _key_usage(*, digital_signature: bool = False, key_encipherment: bool = False,
               key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=key_encipherment, data_encipherment=False,
                         key_agreement=False, key_cert_sign=key_cert_sign, crl_sign=crl_sign,
                         encipher_only=False, decipher_only=False)


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    hint = "renew it (a host: segue agent renew; the CA: segue cluster rotate-ca)"
    if now > cert.not_valid_after_utc:
        raise CertificateExpired(CERT_EXPIRED, f"{what} ({cert.subject.rfc4514_string()}) "
                                 f"expired at {cert.not_valid_after_utc.isoformat()}", hint)
    if now < cert.not_valid_before_utc:
        raise CertificateExpired(CERT_NOT_YET_VALID,
                                 f"{what} ({cert.subject.rfc4514_string()}) is valid only "
                                 f"from {cert.not_valid_before_utc.isoformat()}",
                                 "check this machine's clock (NTP)")


def _name_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""

