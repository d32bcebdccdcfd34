"""Wire models of a host's way into the cluster: join tokens, the CA, joining, renewal.

- ``POST /hosts/{name}/join-token`` (an admin): ``CreateJoinTokenBody`` ->
  ``JoinTokenCreated``, the token (shown in this answer only), the CA pin and, if the
  controller knows it, the URL a host reaches it at.
- ``GET /cluster/ca`` (anyone): ``ClusterCA``, the CA certificate. A host trusts it only once
  it matches the pin of its join ticket (``segue.security.tokens.check_ca_pin``).
- ``POST /join`` (anyone: the token is the credential): ``JoinBody`` -> ``IssuedCertificate``.
- ``POST /hosts/{name}/certificate`` (that host, by its certificate): ``RenewBody`` ->
  ``IssuedCertificate``.

PEM fields are bounded: a signing request for an ECDSA P-256 key is about 400 characters.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from segue.api.base import RequestModel, ResponseModel

MIN_JOIN_TTL_S = 60
MAX_JOIN_TTL_S = 7 * 86400
DEFAULT_JOIN_TTL_S = 3600
MAX_PEM = 8192
HostName = Annotated[str, Field(min_length=1, max_length=253,
                                pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$",
                                description="the host's DNS name")]
JoinTokenText = Annotated[str, Field(min_length=1, max_length=128, description=(
    "the join token, segue-join.<id>.<secret>"))]
CsrPem = Annotated[str, Field(min_length=1, max_length=MAX_PEM, description=(
    "a PEM signing request (PKCS#10) for the key the host made and keeps"))]


class CreateJoinTokenBody(RequestModel):
    """``POST /hosts/{name}/join-token``: a one-time token for host ``name``, valid
    ``ttl_s`` seconds (1 minute to 7 days; default 1 hour)."""

    ttl_s: int = Field(DEFAULT_JOIN_TTL_S, ge=MIN_JOIN_TTL_S, le=MAX_JOIN_TTL_S,
                       description="seconds the token is valid, 60 to 604800")


class JoinTokenCreated(ResponseModel):
    """A new join token: ``token`` is its secret, shown here once; ``ca_pin`` names the
    cluster's CA; ``controller_url`` is where hosts reach the controller (None: unknown
    here, the operator knows it)."""

    id: str
    host: str
    token: str
    ca_pin: str
    expires_at: datetime
    controller_url: str | None = None


class ClusterCA(ResponseModel):
    """``GET /cluster/ca``: the cluster's name and its CA certificate (PEM)."""

    cluster: str
    ca_cert: str


class JoinBody(RequestModel):
    """``POST /join``: host ``host`` asks for its certificate with its join token."""

    host: HostName
    token: JoinTokenText
    csr: CsrPem


class RenewBody(RequestModel):
    """``POST /hosts/{name}/certificate``: a joined host asks for a new certificate for a
    new key."""

    csr: CsrPem


class IssuedCertificate(ResponseModel):
    """A host's new certificate and its CA's (both PEM), when the certificate expires, and
    ``trust``: every CA the host should trust (PEM; empty: ``ca_cert`` alone), two during a
    CA rotation."""

    host: str
    cert: str
    ca_cert: str
    not_after: datetime
    trust: list[str] = Field(default_factory=list)
