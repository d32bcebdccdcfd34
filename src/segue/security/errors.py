"""The error tree of the cluster's PKI, join tokens, API tokens and roles (``segue.security``).

Every error is one of the project's kinds (``segue.domain.errors``) with a stable code:

- ``CertificateInvalid`` (``invalid``): a certificate, key, request or name that cannot be
  used at all: ``CERT_INVALID`` (not PEM/DER, not one of ours in shape: no or several
  ``segue://`` identities), ``CSR_INVALID`` (bad signature, key type other than ECDSA
  P-256, a name other than the one it is issued for), ``CERT_NAME_INVALID`` (a host or
  cluster name that cannot be a certificate name), ``CERT_KEY_MISMATCH`` (a certificate
  that is not for the private key beside it), ``CA_PIN_INVALID`` (a pin not of the form
  ``sha256:<64 hex>``).
- ``CertificateUntrusted`` (``unauthenticated``): ``CERT_UNTRUSTED`` (does not chain to the
  cluster's CA), ``CA_PIN_MISMATCH`` (the CA offered is not the one the join ticket pins).
- ``CertificateExpired`` (``unauthenticated``): ``CERT_EXPIRED``, ``CERT_NOT_YET_VALID``
  (a certificate of the cluster, outside its validity).
- ``CertificateRevoked`` (``unauthenticated``): ``CERT_REVOKED`` (a certificate of the
  cluster that was revoked: ``segue host revoke``).
- ``PeerNotAllowed`` (``forbidden``): a valid certificate of the wrong peer:
  ``CERT_WRONG_HOST`` (it names another host), ``CERT_WRONG_ROLE`` (a host where the
  controller is required, or the reverse).
- ``JoinTokenRefused`` (``unauthenticated``): ``JOIN_TOKEN_INVALID`` (malformed, unknown or
  wrong secret), ``JOIN_TOKEN_EXPIRED``, ``JOIN_TOKEN_USED``.
- ``JoinTokenWrongHost`` (``forbidden``): ``JOIN_TOKEN_WRONG_HOST`` (the token is bound to
  another host name).
- ``AuthenticationRequired`` (``unauthenticated``): ``AUTH_REQUIRED`` (a request over TCP
  with no credentials at all).
- ``ApiTokenRefused`` (``unauthenticated``): ``TOKEN_INVALID`` (malformed, unknown id or wrong
  secret, or an ``Authorization`` header that is not ``Bearer``), ``TOKEN_EXPIRED``,
  ``TOKEN_REVOKED``, ``USER_DISABLED`` (the token's user is disabled).
- ``PermissionDenied`` (``forbidden``): ``PERMISSION_DENIED`` (a known caller whose role does
  not allow the action on the object; the message names role, action and object).
- ``RoleInvalid`` (``invalid``): ``ROLE_INVALID`` (not a role users may have),
  ``TOKEN_ROLE_EXCEEDS_USER`` (a token may only narrow its user's role).
- ``PolicyDenied`` (``forbidden``): ``POLICY_DENIED`` (a user-defined policy refuses the
  action; ``details["denials"]`` names each policy, ``segue.security.policies``).
- ``PolicyInvalid`` (``invalid``): ``POLICY_INVALID`` (a policy entry that cannot be
  applied: the message names the entry and the field), ``POLICY_FILE_INVALID`` (a policy
  file that is not TOML, or has keys other than ``policy``), ``TAG_INVALID``.
- ``CredentialsMissing`` (``not_found``): ``CA_MISSING``, ``CREDENTIALS_MISSING`` (nothing
  installed in a credential directory yet).
- ``CAExists`` (``conflict``): ``CA_EXISTS`` (a cluster CA is already there).
- ``CARotationRefused`` (``conflict``): ``CA_ROTATION_IN_PROGRESS`` (a rotation was started
  and not finished), ``CA_ROTATION_NOT_STARTED`` (nothing to finish),
  ``CA_ROTATION_HOSTS_LAGGING`` (hosts still hold certificates of the old CA).
- ``CredentialStorageUnavailable`` (``unavailable``): ``PKI_STORAGE_UNAVAILABLE`` (a
  credential directory cannot be read or written).
"""

from __future__ import annotations

from segue.domain.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthenticated,
    Unavailable,
)

CERT_INVALID = "CERT_INVALID"
CSR_INVALID = "CSR_INVALID"
CERT_NAME_INVALID = "CERT_NAME_INVALID"
CERT_KEY_MISMATCH = "CERT_KEY_MISMATCH"
CA_PIN_INVALID = "CA_PIN_INVALID"
CERT_UNTRUSTED = "CERT_UNTRUSTED"
CA_PIN_MISMATCH = "CA_PIN_MISMATCH"
CERT_EXPIRED = "CERT_EXPIRED"
CERT_NOT_YET_VALID = "CERT_NOT_YET_VALID"
CERT_WRONG_HOST = "CERT_WRONG_HOST"
CERT_WRONG_ROLE = "CERT_WRONG_ROLE"
CERT_REVOKED = "CERT_REVOKED"
JOIN_TOKEN_INVALID = "JOIN_TOKEN_INVALID"
JOIN_TOKEN_EXPIRED = "JOIN_TOKEN_EXPIRED"
JOIN_TOKEN_USED = "JOIN_TOKEN_USED"
JOIN_TOKEN_WRONG_HOST = "JOIN_TOKEN_WRONG_HOST"
AUTH_REQUIRED = "AUTH_REQUIRED"
TOKEN_INVALID = "TOKEN_INVALID"
TOKEN_EXPIRED = "TOKEN_EXPIRED"
TOKEN_REVOKED = "TOKEN_REVOKED"
USER_DISABLED = "USER_DISABLED"
PERMISSION_DENIED = "PERMISSION_DENIED"
ROLE_INVALID = "ROLE_INVALID"
TOKEN_ROLE_EXCEEDS_USER = "TOKEN_ROLE_EXCEEDS_USER"
POLICY_DENIED = "POLICY_DENIED"
POLICY_INVALID = "POLICY_INVALID"
POLICY_FILE_INVALID = "POLICY_FILE_INVALID"
TAG_INVALID = "TAG_INVALID"
CA_MISSING = "CA_MISSING"
CREDENTIALS_MISSING = "CREDENTIALS_MISSING"
CA_EXISTS = "CA_EXISTS"
CA_ROTATION_IN_PROGRESS = "CA_ROTATION_IN_PROGRESS"
CA_ROTATION_NOT_STARTED = "CA_ROTATION_NOT_STARTED"
CA_ROTATION_HOSTS_LAGGING = "CA_ROTATION_HOSTS_LAGGING"
PKI_STORAGE_UNAVAILABLE = "PKI_STORAGE_UNAVAILABLE"


class CertificateInvalid(InvalidRequest):
    """A certificate, key, signing request, name or pin that cannot be used at all."""


class CertificateUntrusted(Unauthenticated):
    """The certificate (or CA) is not the cluster's."""


class CertificateExpired(Unauthenticated):
    """A certificate of the cluster, used outside its validity."""


class PeerNotAllowed(Forbidden):
    """A valid certificate of the cluster, but of another peer than the one required."""


class JoinTokenRefused(Unauthenticated):
    """The join token does not admit anyone (malformed, unknown, wrong, expired, used)."""


class JoinTokenWrongHost(Forbidden):
    """The join token is valid but bound to another host name."""


class AuthenticationRequired(Unauthenticated):
    """A request that needs credentials came with none."""


class ApiTokenRefused(Unauthenticated):
    """The API token does not admit anyone (malformed, unknown, wrong, expired, revoked, or
    its user disabled)."""


class PermissionDenied(Forbidden):
    """A known caller whose role does not allow this action on this object."""


class RoleInvalid(InvalidRequest):
    """A role that does not exist, or a token role beyond its user's."""


class PolicyDenied(Forbidden):
    """A user-defined policy refuses the action (every refusing policy in ``details``)."""


class PolicyInvalid(InvalidRequest):
    """A policy set, policy file or tag that cannot be applied."""


class CredentialsMissing(NotFound):
    """No CA, or no credentials, installed where they were looked for."""


class CAExists(Conflict):
    """A cluster CA is already there; it is never overwritten."""


class CredentialStorageUnavailable(Unavailable):
    """A credential directory cannot be read or written."""


class CertificateRevoked(Unauthenticated):
    """A certificate of the cluster that was revoked."""


class CARotationRefused(Conflict):
    """A CA rotation step that cannot be taken in the rotation's present state."""
