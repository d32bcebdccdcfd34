"""Database tables of migration jobs: the job, each phase transition, progress samples."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from segue.controller.models import Base, UTCDateTime

ACTIVE_JOB = "phase NOT IN ('completed', 'failed', 'cancelled')"


class MigrationRow(Base):
    """One live migration of one VM from ``source_host`` to ``dest_host``."""

    __tablename__ = "migrations"
    # at most one active job per VM, kept by the database (several controllers, one DB)
    __table_args__ = (Index("uq_active_migration_per_vm", "vm_name", unique=True,
                            sqlite_where=text(ACTIVE_JOB), postgresql_where=text(ACTIVE_JOB)),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    vm_name: Mapped[str] = mapped_column(String(64), index=True)
    source_host: Mapped[str] = mapped_column(String(64))
    dest_host: Mapped[str] = mapped_column(String(64))
    phase: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # the VM's lease generation at admission: the fencing token of the job's source calls
    generation: Mapped[int | None] = mapped_column(Integer, nullable=True)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    transitions: Mapped[list[MigrationTransitionRow]] = relationship(
        back_populates="migration", order_by="MigrationTransitionRow.id",
        cascade="all, delete-orphan")


class MigrationTransitionRow(Base):
    """A phase change (or a decision) of a migration, with when and why."""

    __tablename__ = "migration_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    migration_id: Mapped[str] = mapped_column(ForeignKey("migrations.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    from_phase: Mapped[str | None] = mapped_column(String(32), nullable=True)
    to_phase: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")

    migration: Mapped[MigrationRow] = relationship(back_populates="transitions")


class MigrationSampleRow(Base):
    """One progress sample (the fields of ``segue.engine.progress.Progress``)."""

    __tablename__ = "migration_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    migration_id: Mapped[str] = mapped_column(ForeignKey("migrations.id"), index=True)
    t: Mapped[float] = mapped_column(Float)  # seconds since the job started
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
