"""Database tables of the cluster's certificates: every certificate the controller issued to
a host (serial, issuer, validity, revocation), and the hosts it revoked."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from segue.controller.models import Base, UTCDateTime


class IssuedCertificate(Base):
    """A host's certificate as issued (serials and the issuing CA's serial in hex)."""

    __tablename__ = "issued_certificates"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    host: Mapped[str] = mapped_column(String(253), index=True)
    issuer: Mapped[str] = mapped_column(String(40))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class HostRevocation(Base):
    """A revoked host: its certificates issued up to ``revoked_at`` are refused until it
    joins again."""

    __tablename__ = "host_revocations"

    host: Mapped[str] = mapped_column(String(253), primary_key=True)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text, default="")
    revoked_by: Mapped[str] = mapped_column(String(128))
