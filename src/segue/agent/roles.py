"""A VM's role on one host during (and outside) a live migration, from QEMU's own answers.

Pure: the caller asks QEMU (``query-status``, ``query-migrate``) and passes the answers in.

- ``owner``: the host runs (or keeps) the VM and no migration of it is under way here.
- ``source``: a migration from this host is under way, or completed and the VM waits in
  ``postmigrate`` to be released (or resumed, if the destination failed).
- ``incoming``: this host is the destination and has not claimed the VM yet.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from segue.domain.vm import VMState


class VMRole(StrEnum):
    OWNER = "owner"
    SOURCE = "source"
    INCOMING = "incoming"


# query-migrate statuses (QEMU 7.2 MigrationStatus) while a migration still runs.
ACTIVE_MIGRATION_STATUSES = frozenset({
    "setup", "active", "pre-switchover", "device", "wait-unplug", "cancelling",
    "postcopy-active", "postcopy-paused", "postcopy-recover",
})


def migration_active(migration: dict[str, Any]) -> bool:
    """True if a ``query-migrate`` answer (or MIGRATION event data) says it still runs."""
    return migration.get("status") in ACTIVE_MIGRATION_STATUSES


def migration_completed(migration: dict[str, Any]) -> bool:
    """True if a ``query-migrate`` answer (or MIGRATION event data) says it completed."""
    return migration.get("status") == "completed"


def role_of(incoming: bool, migration: dict[str, Any], state: VMState) -> VMRole:
    """The VM's role, given whether it is an unclaimed destination here, QEMU's
    ``query-migrate`` answer ({} if none) and its run state."""
    if incoming:
        return VMRole.INCOMING
    if migration_active(migration) or state == VMState.POSTMIGRATE:
        return VMRole.SOURCE
    if migration_completed(migration) and state == VMState.PAUSED:
        return VMRole.SOURCE  # QEMU says completed a moment before it leaves finish-migrate
    return VMRole.OWNER
