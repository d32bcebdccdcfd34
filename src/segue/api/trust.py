"""Wire models of the cluster's trust: revoking a host, the trust bundle, the CA's rotation.

- ``POST /hosts/{name}/revoke`` (admins): ``RevokeBody`` -> ``RevokedHostView``.
- ``GET /cluster/trust`` (anyone): ``TrustBundle``, the CAs to trust and the one that issues.
- ``GET /cluster/crl`` (anyone): ``CRLs``, the PEM of the CRLs.
- ``POST /cluster/ca/rotate``, ``GET /cluster/ca/rotation``,
  ``POST /cluster/ca/rotate/finish?force=`` (admins; reading: ``cluster read``):
  ``RotationStatus``.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from segue.api.base import RequestModel, ResponseModel


class RevokeBody(RequestModel):
    """Why the host is revoked (kept in the audit log and the CRL's records)."""

    reason: str = Field("", max_length=500, description="why, for the audit log")


class RevokedHostView(ResponseModel):
    host: str
    revoked_at: datetime
    reason: str
    serials: list[str]


class CRLs(ResponseModel):
    """``crls``: one CRL per CA the cluster trusts, each signed by its CA, PEM, concatenated
    (what a host keeps as ``ca-crl.pem``)."""

    crls: str


class TrustBundle(ResponseModel):
    """``ca_certs``: every CA the cluster trusts (PEM; two during a rotation);
    ``issuing_ca``: the one that issues hosts' certificates now."""

    cluster: str
    ca_certs: list[str]
    issuing_ca: str
    rotating: bool


class HostOnCA(ResponseModel):
    """The CA of the last certificate issued to ``host``: ``old``, ``new`` (during a
    rotation), ``current`` (outside one) or ``unknown`` (issued before the controller kept
    records, or never)."""

    host: str
    ca: str
    serial: str | None = None
    issued_at: datetime | None = None


class RotationStatus(ResponseModel):
    rotating: bool
    current_ca: str
    next_ca: str | None = None
    issuing_ca: str
    hosts: list[HostOnCA]
    lagging: list[str]
