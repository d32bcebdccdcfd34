"""PEM encoding of the cluster's certificates, keys and signing requests.

The formats are the ones QEMU's ``tls-creds-x509`` (GnuTLS) and Python's ``ssl`` (OpenSSL)
both read: certificates as ``CERTIFICATE`` blocks, private keys as unencrypted PKCS#8
``PRIVATE KEY`` blocks, signing requests as PKCS#10 ``CERTIFICATE REQUEST`` blocks.

Errors: ``CertificateInvalid`` (``segue.security.errors``): ``CERT_INVALID`` for a
certificate or key that does not parse (or a key that is not ECDSA P-256), ``CSR_INVALID``
for a signing request that does not parse.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from segue.security.errors import CERT_INVALID, CSR_INVALID, CertificateInvalid
from segue.security.pki import PrivateKey

_HINT = "give the PEM file segue wrote (segue cluster init, segue agent join)"


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_from_pem(data: bytes) -> x509.Certificate:
    """The one certificate in ``data``; CertificateInvalid (``CERT_INVALID``) if there is
    not exactly one."""
    certs = certs_from_pem(data)
    if len(certs) != 1:
        raise CertificateInvalid(CERT_INVALID, f"{len(certs)} certificates where one is wanted",
                                 _HINT)
    return certs[0]


def certs_from_pem(data: bytes) -> list[x509.Certificate]:
    """Every certificate in ``data`` (a bundle); CertificateInvalid (``CERT_INVALID``) if one
    does not parse or there is none."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise CertificateInvalid(CERT_INVALID, f"not a PEM certificate: {err}", _HINT) from err
    return certs


def key_to_pem(key: PrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM (store it 0600: ``segue.security.store``)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_from_pem(data: bytes) -> PrivateKey:
    """The ECDSA P-256 private key in ``data`` (PKCS#8 or SEC1, unencrypted);
    CertificateInvalid (``CERT_INVALID``) for anything else."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:  # TypeError: an encrypted key
        raise CertificateInvalid(CERT_INVALID, f"not an unencrypted PEM private key: {err}",
                                 _HINT) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve,
                                                                         ec.SECP256R1):
        raise CertificateInvalid(CERT_INVALID, "the private key is not ECDSA P-256", _HINT)
    return key


def csr_to_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def csr_from_pem(data: bytes) -> x509.CertificateSigningRequest:
    """The signing request in ``data``; CertificateInvalid (``CSR_INVALID``) if it does not
    parse (its signature is checked when it is issued: ``pki.issue_certificate``)."""
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError as err:
        raise CertificateInvalid(CSR_INVALID, f"not a PEM signing request: {err}",
                                 "send the request segue agent join made") from err
