"""The inventory's database tables: hosts, VMs and the VM event log.

``Base`` is the declarative base of every controller table (other model modules, such as the
migration jobs', define their tables on it). Times are timezone-aware UTC datetimes in Python
(``UTCDateTime``), whatever the database keeps.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """Now, timezone-aware UTC (the clock every inventory time comes from)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware.

    SQLite keeps no zone (it hands back naive datetimes); PostgreSQL keeps ``timestamptz``.
    Binding a naive datetime is a programming error and raises ValueError.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: use segue.controller.models.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of all controller tables."""


class HostState(StrEnum):
    """Whether a host's agent sends heartbeats (``disconnected`` after heartbeat_timeout)."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class Host(Base):
    """A hypervisor host, as its agent last reported it."""

    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(String(255))
    migration_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default=HostState.CONNECTED.value)
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False)  # = state not normal
    maintenance_state: Mapped[str] = mapped_column(String(24), default="normal")
    maintenance_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    migration_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class VM(Base):
    """A VM of the cluster: its spec, the host that owns it and its last known run state.

    ``state`` is a ``segue.domain.vm.VMState`` value, or ``missing`` when its host's agent
    stopped reporting it.
    """

    __tablename__ = "vms"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    uuid: Mapped[str] = mapped_column(String(36))
    host: Mapped[str] = mapped_column(ForeignKey("hosts.name"), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16))
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    generation: Mapped[int | None] = mapped_column(Integer, nullable=True)


class VMInstance(Base):
    """One host's QEMU (or definition) of a VM as that host's last heartbeat reported it:
    its run state, role, the lease generation it holds (None: none) and why it is fenced.
    A host's rows are replaced by each of its heartbeats (``segue.controller.reconcile``)."""

    __tablename__ = "vm_instances"
    __table_args__ = (UniqueConstraint("vm_name", "host", name="uq_vm_instance_per_host"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_name: Mapped[str] = mapped_column(String(64), index=True)
    host: Mapped[str] = mapped_column(String(64), index=True)
    uuid: Mapped[str] = mapped_column(String(36))
    state: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    generation: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fenced: Mapped[str | None] = mapped_column(Text, nullable=True)
    migration_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class VMEvent(Base):
    """One change in a VM's life. Kept after the VM is destroyed (no foreign key)."""

    __tablename__ = "vm_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_name: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
