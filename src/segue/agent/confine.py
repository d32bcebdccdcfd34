"""Which files a VM may use on this host: only files under the host's configured roots.

An agent trusts no path it is given (DESIGN.md, Trust). A VM's kernel and initrd must lie
under one of the host's image directories (``image_dirs``) or datastores; each disk under
its own datastore; the VM's home directory on its datastore (where its ``vm.json`` goes)
inside that datastore. Paths are resolved before they are compared (symlinks followed,
``..`` folded, as ``Path.resolve(strict=False)``), so a symlink inside a datastore that
points out of it is outside. A qcow2 disk's backing chain and external data file, which
QEMU opens with it, must lie in the disk's datastore too, each backing file with its format
recorded in the image (``qemu-img create -F``, ``rebase -F``): QEMU would otherwise probe
the file, and some formats name further files. Inside a datastore, Segue's own files (the
identity file, ``.segue/`` with the leases, a VM's ``vm.json``) are no VM's file: a guest
writing them as a disk would forge leases. The console log is the agent's choice, always
``<runtime dir>/serial.log``; a spec's ``serial_log`` may only name that file.

The checks are decisions over a spec and the host's ``Roots``; the only I/O is resolving
the paths (reading symlinks) and reading the first cluster of each qcow2 disk. Callers:
``VMManager`` on define, on start and at every QEMU launch (which then opens the resolved
paths), the destination's ``prepare``, and the manager's ``load`` (a stored spec that
fails is kept but cannot start).

Errors: ``InvalidRequest`` ``PATH_OUTSIDE_DATASTORE`` (a file outside the roots, or a path
that is not absolute), ``PATH_RESERVED`` (one of Segue's own datastore files),
``SERIAL_LOG_OUTSIDE_RUNTIME``, ``DISK_CHAIN_REFUSED`` (a qcow2 disk whose header is
unreadable, or whose backing file is a protocol or ``json:`` name, has no recorded format,
or chains deeper than ``MAX_CHAIN``); each names the field and the path, the hint names
what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from segue.domain.errors import InvalidRequest
from segue.domain.vm import DiskSpec, VMSpec
from segue.qemu.qcow2 import read_references

# Segue's own files on a datastore (segue.agent.facts, .leases, .vmstore), never a VM's.
RESERVED_PREFIX = ".segue"  # .segue-datastore.json, .segue/leases/...
RESERVED_NAMES = frozenset({"vm.json"})
MAX_CHAIN = 16  # backing files below a disk
CHAIN_FORMATS = ("qcow2", "raw")  # formats a backing file may have (others name files)


@dataclass(frozen=True)
class Roots:
    """The directories a VM's files may lie under on this host, as configured."""

    datastores: Mapping[str, Path]  # name -> mount directory
    image_dirs: tuple[Path, ...] = ()

    def describe(self) -> str:
        """The allowed roots, for a hint."""
        parts = [f"image dir {d}" for d in self.image_dirs]
        parts += [f"datastore {n} ({d})" for n, d in sorted(self.datastores.items())]
        return ", ".join(parts) or "none (the agent configures no datastore nor image dir)"


def resolve(path: Path) -> Path:
    """``path`` made absolute with every symlink followed and ``..`` folded (parts that do
    not exist are kept as given)."""
    return Path(os.path.realpath(path))


def _below(path: Path, root: Path) -> bool:
    """Whether the resolved ``path`` lies strictly below the resolved ``root``."""
    return path != root and path.is_relative_to(root)


def _outside(field: str, given: str, resolved: Path, where: str, allowed: str
             ) -> InvalidRequest:
    via = f" (it resolves to {resolved})" if str(resolved) != given else ""
    return InvalidRequest(
        "PATH_OUTSIDE_DATASTORE", f"{field}: {given or repr(given)}{via} is outside {where}",
        f"put the file under {allowed}", field=field, path=given)


def _check_reserved(field: str, given: str, resolved: Path, root: Path) -> None:
    parts = resolved.relative_to(root).parts
    if parts[-1] in RESERVED_NAMES or any(p.startswith(RESERVED_PREFIX) for p in parts):
        raise InvalidRequest(
            "PATH_RESERVED", f"{field}: {given} is one of Segue's own files on the datastore",
            "give the VM a file of its own (not a vm.json, nor anything under .segue*)",
            field=field, path=str(given))


def boot_file(field: str, path: str, roots: Roots) -> Path:
    """The resolved kernel or initrd ``path``; it must be absolute and lie under an image
    dir or a datastore (raises ``PATH_OUTSIDE_DATASTORE``, or ``PATH_RESERVED`` for one of
    Segue's own datastore files)."""
    allowed = roots.describe()
    if not os.path.isabs(path):
        raise InvalidRequest(
            "PATH_OUTSIDE_DATASTORE", f"{field}: {path} is not an absolute path",
            f"give an absolute path under one of: {allowed}", field=field, path=path)
    resolved = resolve(Path(path))
    if any(_below(resolved, resolve(d)) for d in roots.image_dirs):
        return resolved
    for root in map(resolve, roots.datastores.values()):
        if _below(resolved, root):
            _check_reserved(field, path, resolved, root)
            return resolved
    raise _outside(field, path, resolved, "this host's image dirs and datastores",
                   f"one of: {allowed}")


def datastore_file(field: str, datastore: str, relative: str, roots: Roots,
                   reserved_ok: bool = False) -> Path | None:
    """The resolved path of ``relative`` inside datastore ``datastore``; None if this host
    does not mount that datastore (the admission checks say so). Raises
    ``PATH_OUTSIDE_DATASTORE`` if it resolves outside that datastore (absolute, ``..``,
    a symlink out of it), ``PATH_RESERVED`` for one of Segue's own files unless
    ``reserved_ok`` (a question about a file, such as whether a host sees a VM's
    ``vm.json``, not a file a VM would use)."""
    mount = roots.datastores.get(datastore)
    if mount is None:
        return None
    root = resolve(mount)
    resolved = resolve(mount / relative)
    if not _below(resolved, root):
        raise _outside(field, relative, resolved, f"datastore {datastore} ({mount})",
                       f"datastore {datastore} ({mount}), named by a path relative to it "
                       "that stays inside it (no '..', no symlink out of it)")
    if not reserved_ok:
        _check_reserved(field, relative, resolved, root)
    return resolved


def vm_files(spec: VMSpec, roots: Roots) -> dict[str, Path]:
    """Every file the VM's QEMU opens, by role (``kernel``, ``initrd``, ``disks[0]``...),
    resolved; disks on a datastore this host does not mount are left out. Also checks the
    VM's home directory on its datastore. Raises as ``boot_file`` and ``datastore_file``."""
    datastore_file("datastore", spec.datastore, spec.name, roots)  # the home of its vm.json
    files: dict[str, Path] = {}
    if spec.kernel is not None:
        files["kernel"] = boot_file("kernel", spec.kernel, roots)
    if spec.initrd is not None:
        files["initrd"] = boot_file("initrd", spec.initrd, roots)
    for i, disk in enumerate(spec.disks):
        path = datastore_file(f"disks[{i}].path", disk.datastore, disk.path, roots)
        if path is not None:
            check_chain(f"disks[{i}].path", disk, path, roots)
            files[f"disks[{i}]"] = path
    return files


def _chain_refused(field: str, disk: DiskSpec, problem: str, hint: str) -> InvalidRequest:
    return InvalidRequest("DISK_CHAIN_REFUSED", f"{field}: {disk.path}: {problem}", hint,
                          field=field, path=disk.path)


def check_chain(field: str, disk: DiskSpec, path: Path, roots: Roots) -> None:
    """A qcow2 ``disk`` (at the resolved ``path``; one not there yet is admission's to
    report) names no file outside its datastore: its data file and every backing file lie
    in it, each backing file a qcow2 or raw image by its recorded format. Raises
    ``PATH_OUTSIDE_DATASTORE``, ``PATH_RESERVED`` or ``DISK_CHAIN_REFUSED``."""
    fmt, image = disk.format, path
    for _ in range(MAX_CHAIN + 1):
        if fmt != "qcow2" or not image.is_file():
            return
        try:
            refs = read_references(image)
        except (OSError, ValueError) as err:
            raise _chain_refused(field, disk, f"{image} has no readable qcow2 header ({err})",
                                 "check the image with qemu-img check") from err
        if refs is None:
            return  # no qcow2 image: QEMU refuses it itself
        if refs.data_file is not None:
            _chained(field, disk, image, refs.data_file, "data file", roots)
        if refs.backing_file is None:
            return
        if refs.backing_format not in CHAIN_FORMATS:
            raise _chain_refused(
                field, disk, f"{image}'s backing file {refs.backing_file} has format "
                f"{refs.backing_format or 'unrecorded'}, not one of {', '.join(CHAIN_FORMATS)}",
                "record its format: qemu-img rebase -u -F qcow2 (or raw) -b BACKING IMAGE")
        fmt, image = refs.backing_format, _chained(field, disk, image, refs.backing_file,
                                                   "backing file", roots)
    raise _chain_refused(field, disk, f"its backing chain is deeper than {MAX_CHAIN}",
                         "flatten it: qemu-img convert, or qemu-img rebase onto a nearer base")


def _chained(field: str, disk: DiskSpec, image: Path, name: str, what: str,
             roots: Roots) -> Path:
    """The resolved file that ``image`` names (relative names from its directory, as QEMU
    reads them); it must lie in the disk's datastore."""
    head = name.split("/", 1)[0]
    if ":" in head:  # QEMU reads "nbd:...", "json:{...}" as protocols, not files
        raise _chain_refused(field, disk, f"{image}'s {what} {name} is no plain file name",
                             "give it a file in the same datastore")
    resolved = resolve(image.parent / name)
    root = resolve(roots.datastores[disk.datastore])
    if not _below(resolved, root):
        where = f"datastore {disk.datastore} ({roots.datastores[disk.datastore]})"
        raise _outside(field, f"{disk.path}'s {what} {name}", resolved, where,
                       f"{where}, as the disk is (a {what} shares the disk's datastore)")
    _check_reserved(field, name, resolved, root)
    return resolved


def check_serial_log(spec: VMSpec, log: Path) -> None:
    """A spec may name no console log, or this VM's own (``log``, in its runtime dir);
    anything else raises ``SERIAL_LOG_OUTSIDE_RUNTIME``: QEMU would append the guest's
    console to it, and the agent would serve it back."""
    if spec.serial_log is None or resolve(Path(spec.serial_log)) == resolve(log):
        return
    raise InvalidRequest(
        "SERIAL_LOG_OUTSIDE_RUNTIME",
        f"serial_log: {spec.serial_log} is not this VM's console log ({log})",
        f"leave serial_log out: the agent writes the console to {log} "
        f"(GET /vms/{spec.name}/serial reads it)", field="serial_log", path=spec.serial_log)


def without_serial_log(spec: VMSpec) -> VMSpec:
    """The spec as the agent keeps it: the console log is always the runtime dir's."""
    return spec if spec.serial_log is None else spec.with_changes(serial_log=None)


__all__ = ["Roots", "boot_file", "check_chain", "check_serial_log", "datastore_file", "resolve",
           "vm_files", "without_serial_log"]
