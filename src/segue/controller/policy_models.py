"""Database tables of user-defined policies: the tags of VMs, hosts and users, and the
policy set (``segue.security.policies``).

A tag row names its object by kind and name, not by a foreign key: a VM's tags are set
once the inventory knows the VM and dropped with it (``policy_store.drop_tags``). The
policy set is replaced whole (``policy_store.replace_policies``); each row keeps the entry
as a file declares it (``segue.security.policy_file.to_entry``), its position in the set,
and when and by whom the set was applied.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from segue.controller.models import Base, UTCDateTime


class Tag(Base):
    """One tag of one VM, host or user (``kind``: vm, host, user)."""

    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("kind", "name", "tag", name="uq_tag_per_object"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))
    name: Mapped[str] = mapped_column(String(64), index=True)
    tag: Mapped[str] = mapped_column(String(64))


class PolicyRow(Base):
    """One policy of the set in force."""

    __tablename__ = "policies"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    entry: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime)
    applied_by: Mapped[str] = mapped_column(String(128))
