"""A VM's role on one host during (and outside) a live migration, from QEMU's own answers.

Pure: the caller asks QEMU (``query-status``, ``query-migrate``) and passes the answers in.

- ``owner``: the host runs (or keeps) the VM and no migration of it is under way here.
- ``source``: a migration from this host is under way, or completed and the VM waits in
  ``postmigrate`` to be released (or resumed, if the destination failed).
- ``incoming``: this host is the destination and has not claimed the VM yet.
"""

from __future__ import annotations

from enum import StrEnum

from segue.api.qemu import MigrationStatus, QueryMigrate
from segue.domain.vm import VMState


class VMRole(StrEnum):
    OWNER = "owner"
    SOURCE = "source"
    INCOMING = "incoming"


def migration_active(migration: QueryMigrate) -> bool:
    """True if QEMU's ``query-migrate`` answer says a migration still runs."""
    return migration.status.active


def migration_completed(migration: QueryMigrate) -> bool:
    """True if QEMU's ``query-migrate`` answer says the migration completed."""
    return migration.status is MigrationStatus.COMPLETED


def role_of(incoming: bool, migration: QueryMigrate, state: VMState) -> VMRole:
    """The VM's role, given whether it is an unclaimed destination here, QEMU's
    ``query-migrate`` answer (status ``none`` if none) and its run state."""
    if incoming:
        return VMRole.INCOMING
    if migration_active(migration) or state == VMState.POSTMIGRATE:
        return VMRole.SOURCE
    if migration_completed(migration) and state == VMState.PAUSED:
        return VMRole.SOURCE  # QEMU says completed a moment before it leaves finish-migrate
    return VMRole.OWNER
