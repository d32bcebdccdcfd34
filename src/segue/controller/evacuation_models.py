"""Database tables of maintenance evacuations (``segue.controller.evacuation``): one row per
evacuation of a host, one per VM of it (its planned destination or its blocker, the
migration job requested for it, and where it stands).

A VM's ``job_id`` is written as soon as its migration is requested, so a controller that
restarts awaits that job instead of requesting another.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from segue.controller.models import Base, UTCDateTime


class EvacuationRow(Base):
    """One evacuation: ``kind`` evacuate (the host emptied for maintenance) or return (the
    VMs an evacuation moved, brought back by ``exit --return``); ``state`` running, done
    (every VM moved), stuck (blockers left), stopped (the host left maintenance first)."""

    __tablename__ = "evacuations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="evacuate",
                                      server_default="evacuate")
    max_parallel: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    predicted_s: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class EvacuationMoveRow(Base):
    """One VM of an evacuation: ``phase`` planned, migrating (``job_id`` set), moved,
    blocked (``blocker`` and ``message``: the planner's or the job's error); ``source``:
    the host it leaves when not the evacuation's (a return's moves)."""

    __tablename__ = "evacuation_moves"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    evacuation_id: Mapped[int] = mapped_column(ForeignKey("evacuations.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    vm: Mapped[str] = mapped_column(String(64))
    dest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    predicted_s: Mapped[float] = mapped_column(Float, default=0.0)
    phase: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    blocker: Mapped[str | None] = mapped_column(String(64), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
