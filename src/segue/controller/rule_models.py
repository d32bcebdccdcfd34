"""Database table of placement rules (``segue.placement.rules``): one row per rule.

A rule names its VMs by name (``vms``, a JSON list) and/or by a VM tag, and its host group
by a host tag; VMs are not foreign keys, as a rule may bind VMs by a tag that a VM gets
later. Rows are written only after the whole set was checked feasible
(``rule_store.create_rule``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from segue.controller.models import Base, UTCDateTime


class RuleRow(Base):
    """One placement rule."""

    __tablename__ = "placement_rules"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    strength: Mapped[str] = mapped_column(String(8))
    vms: Mapped[list[str]] = mapped_column(JSON, default=list)
    vm_tag: Mapped[str | None] = mapped_column(String(64), nullable=True)
    host_tag: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(128))
