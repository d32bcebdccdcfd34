"""Storage check: the destination mounts the very datastores the VM uses.

The VM's home datastore (its definition) and every disk's datastore must be mounted on the
destination under the same name with the same identity (the uuid in the datastore's identity
file) as on the source: the same storage, not merely a directory at the same path. Storage
migration does not exist yet, so anything else is an error.
"""

from __future__ import annotations

from segue.checks.context import MigrationContext
from segue.checks.result import CheckResult, error, passed
from segue.domain.host import DatastoreFacts

NO_STORAGE_MIGRATION = "storage migration is not available yet"


def _users(ctx: MigrationContext) -> dict[str, list[str]]:
    """Datastore name -> what of the VM lives there (``definition`` and disk paths)."""
    users: dict[str, list[str]] = {ctx.vm.datastore: ["definition"]}
    for disk in ctx.vm.disks:
        users.setdefault(disk.datastore, []).append(disk.path)
    return users


def _problem(ctx: MigrationContext, name: str, users: list[str],
             src: DatastoreFacts | None, dst: DatastoreFacts | None) -> CheckResult | None:
    facts = {"datastore": name, "used_for": users, "source_uuid": src.uuid if src else None,
             "dest_uuid": dst.uuid if dst else None}
    what = f"datastore {name} ({', '.join(users)})"
    if src is None or not src.present or not src.uuid:
        return error("storage", "DATASTORE_IDENTITY_UNKNOWN",
                     f"{ctx.source.name} reports no identity for {what}",
                     f"give {name} an identity file on {ctx.source.name}", **facts)
    if dst is None or (dst.present and dst.uuid != src.uuid):
        where = "is not configured" if dst is None else f"is another datastore (uuid {dst.uuid})"
        return error("storage", "DATASTORE_NOT_SHARED",
                     f"{what} {where} on {ctx.dest.name}",
                     f"put the VM on a datastore both hosts mount; {NO_STORAGE_MIGRATION}",
                     **facts)
    if not dst.present:
        return error("storage", "DATASTORE_NOT_MOUNTED",
                     f"{what} is not mounted on {ctx.dest.name} ({dst.path}): its files are not "
                     "visible there", f"mount {name} at {dst.path} on {ctx.dest.name}; "
                     f"{NO_STORAGE_MIGRATION}", path=dst.path, **facts)
    return None


def vm_files(ctx: MigrationContext) -> list[tuple[str, str]]:
    """(datastore, path) of every file the destination must see: definition and disks."""
    return [(ctx.vm.datastore, f"{ctx.vm.name}/vm.json"),
            *((d.datastore, d.path) for d in ctx.vm.disks)]


def _invisible(ctx: MigrationContext, bad_datastores: set[str]) -> list[CheckResult]:
    if ctx.files_visible is None:
        return []
    return [error("storage", "DISK_NOT_VISIBLE",
                  f"{path} on datastore {ds} is not visible on {ctx.dest.name}",
                  f"check that {ctx.dest.name} mounts all of {ds}; {NO_STORAGE_MIGRATION}",
                  datastore=ds, path=path)
            for ds, path in vm_files(ctx)
            if ds not in bad_datastores and not ctx.files_visible.get(f"{ds}:{path}", False)]


def check_storage(ctx: MigrationContext) -> list[CheckResult]:
    """DATASTORE_NOT_SHARED, DATASTORE_NOT_MOUNTED or DATASTORE_IDENTITY_UNKNOWN per datastore
    the VM uses, DISK_NOT_VISIBLE per file the destination does not see; else STORAGE_OK."""
    source = {d.name: d for d in ctx.source.facts.datastores}
    dest = {d.name: d for d in ctx.dest.facts.datastores}
    users = _users(ctx)
    problems = [p for name in sorted(users)
                if (p := _problem(ctx, name, users[name], source.get(name), dest.get(name)))]
    problems += _invisible(ctx, {str(p.facts.get("datastore")) for p in problems})
    return passed("storage", problems, f"{ctx.dest.name} mounts the same datastore(s) "
                  f"{', '.join(sorted(users))}", datastores=sorted(users))
