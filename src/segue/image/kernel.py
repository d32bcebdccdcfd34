"""The guest kernel: Debian's cloud kernel package, fetched with apt and unpacked, not installed.

``resolve_package`` names the current ``linux-image-*-cloud-amd64`` package, ``fetch_package``
brings its .deb into a directory (``apt-get update`` only when the lists are missing), and
``unpack_kernel`` extracts it with ``dpkg-deb -x`` and picks the kernel and the modules the
guest needs, in load order. Module dependencies come from each module's ``.modinfo`` section
(the package carries no modules.dep: depmod makes it at install time); built-in drivers come
from ``modules.builtin``. Failures raise ``Unavailable("IMAGE_BUILD_FAILED", ...)``.
"""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from segue.domain.errors import Unavailable

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"

# The virtio network and disk drivers, plus the ACPI power button and evdev, through which
# busybox acpid sees the button that QEMU's system_powerdown presses.
GUEST_MODULES = (
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
    "button",
    "evdev",
)
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst")
_HINT = "check that apt can reach the Debian mirror (apt-get update) and that dpkg-deb exists"


@dataclass(frozen=True)
class KernelPackage:
    """A kernel .deb file on disk."""

    name: str
    deb: Path


@dataclass(frozen=True)
class UnpackedKernel:
    """A kernel image and the module files to load, in dependency order (name, .ko bytes)."""

    version: str
    vmlinuz: Path
    modules: tuple[tuple[str, bytes], ...]
    builtin: frozenset[str]


def run(argv: Sequence[str], what: str, cwd: Path | None = None) -> str:
    """Runs a command and returns its stdout; raises IMAGE_BUILD_FAILED with the stderr tail."""
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as err:
        raise Unavailable("IMAGE_BUILD_FAILED", f"{what}: {err}", hint=_HINT) from err
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-5:])
        message = f"{what}: {' '.join(argv)} exited with {proc.returncode}: {tail}"
        raise Unavailable("IMAGE_BUILD_FAILED", message, hint=_HINT)
    return proc.stdout


def resolve_package() -> str:
    """The concrete kernel package the cloud meta-package depends on (apt lists refreshed once
    if they are missing); raises IMAGE_BUILD_FAILED when there is none."""
    for attempt in range(2):
        out = run(["apt-cache", "depends", KERNEL_META_PACKAGE], "resolving the kernel")
        names = parse_depends(out)
        if names:
            return names[0]
        if attempt == 0:
            run(["apt-get", "update"], "refreshing the apt lists")
    raise Unavailable(
        "IMAGE_BUILD_FAILED", f"apt knows no package behind {KERNEL_META_PACKAGE}", hint=_HINT
    )


def parse_depends(apt_cache_output: str) -> list[str]:
    """The ``linux-image-*`` names in ``apt-cache depends`` output, in order."""
    names = []
    for line in apt_cache_output.splitlines():
        kind, _, name = line.strip().partition(": ")
        if kind.endswith("Depends") and name.startswith("linux-image-"):
            names.append(name.strip("<>"))
    return names


def fetch_package(name: str, into: Path) -> KernelPackage:
    """The package's .deb in ``into``, downloaded unless apt's current version is already there.

    Runs ``apt-get update`` and retries once when the download fails (missing lists); raises
    IMAGE_BUILD_FAILED with apt's stderr when it still fails.
    """
    into.mkdir(parents=True, exist_ok=True)
    filename = _candidate_filename(name)
    if filename and (into / filename).is_file():
        return KernelPackage(name, into / filename)
    try:
        run(["apt-get", "download", name], f"downloading {name}", cwd=into)
    except Unavailable:
        run(["apt-get", "update"], "refreshing the apt lists")
        run(["apt-get", "download", name], f"downloading {name}", cwd=into)
    debs = sorted(into.glob(f"{name}_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise Unavailable("IMAGE_BUILD_FAILED", f"apt-get download left no {name} .deb", _HINT)
    return KernelPackage(name, debs[-1])


def _candidate_filename(name: str) -> str | None:
    """The .deb file name of apt's candidate version, or None when apt cannot tell."""
    try:
        out = run(["apt-cache", "show", "--no-all-versions", name], f"looking up {name}")
    except Unavailable:
        return None
    for line in out.splitlines():
        if line.startswith("Filename:"):
            return line.split("/")[-1].strip()
    return None


def unpack_kernel(package: KernelPackage, workdir: Path) -> UnpackedKernel:
    """Extracts the package into ``workdir`` and collects the kernel and GUEST_MODULES.

    Raises IMAGE_BUILD_FAILED when the package holds no kernel or a needed driver is neither
    built in nor a module.
    """
    run(["dpkg-deb", "-x", str(package.deb), str(workdir)], f"unpacking {package.deb.name}")
    kernels = sorted((workdir / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise Unavailable("IMAGE_BUILD_FAILED", f"no /boot/vmlinuz-* in {package.deb.name}")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    moddir = workdir / "lib" / "modules" / version
    builtin = parse_builtin((moddir / "modules.builtin").read_text())
    contents = _read_needed(index_modules(moddir), builtin)
    deps = {name: modinfo_depends(data) for name, data in contents.items()}
    order = load_order(GUEST_MODULES, builtin, deps)
    modules = tuple((name, contents[name]) for name in order)
    return UnpackedKernel(version, kernels[-1], modules, frozenset(builtin))


def _read_needed(files: Mapping[str, Path], builtin: set[str]) -> dict[str, bytes]:
    """The bytes of GUEST_MODULES and of everything they depend on (other modules are not read)."""
    contents: dict[str, bytes] = {}
    pending = [name for name in GUEST_MODULES if name in files and name not in builtin]
    while pending:
        name = pending.pop()
        if name not in contents:
            contents[name] = read_module(files[name])
            deps = modinfo_depends(contents[name])
            pending += [dep for dep in deps if dep in files and dep not in builtin]
    return contents


def module_name(filename: str) -> str:
    """The module name of a module file name (``virtio-rng.ko.xz`` -> ``virtio_rng``)."""
    for suffix in _MODULE_SUFFIXES:
        if filename.endswith(suffix):
            filename = filename[: -len(suffix)]
            break
    return filename.replace("-", "_")


def parse_builtin(text: str) -> set[str]:
    """Module names listed in a ``modules.builtin`` file."""
    return {module_name(line.rsplit("/", 1)[-1]) for line in text.split() if line}


def index_modules(moddir: Path) -> dict[str, Path]:
    """Every module file under ``moddir/kernel`` by module name."""
    return {
        module_name(path.name): path
        for path in (moddir / "kernel").rglob("*.ko*")
        if path.name.endswith(_MODULE_SUFFIXES)
    }


def read_module(path: Path) -> bytes:
    """A module file's ELF bytes, decompressed (.xz with lzma, .zst with the zstd tool)."""
    if path.name.endswith(".xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".zst"):
        if shutil.which("zstd") is None:
            raise Unavailable("IMAGE_BUILD_FAILED", f"{path.name} needs zstd", hint="install zstd")
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return path.read_bytes()


def modinfo_depends(elf: bytes) -> list[str]:
    """The ``depends=`` list of a module's ``.modinfo`` section (ELF64 little-endian).

    Raises ValueError when the data is not such an ELF file or has no .modinfo section.
    """
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 module")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + index * shentsize)
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if elf[names_at + name : elf.index(b"\0", names_at + name)] == b".modinfo":
            return _depends_field(elf[offset : offset + size])
    raise ValueError("module has no .modinfo section")


def _depends_field(modinfo: bytes) -> list[str]:
    for entry in modinfo.split(b"\0"):
        if entry.startswith(b"depends="):
            return [name for name in entry[8:].decode().split(",") if name]
    return []


def load_order(
    wanted: Iterable[str], builtin: set[str], deps: Mapping[str, Sequence[str]]
) -> list[str]:
    """The modules to load for ``wanted``, each after its dependencies; built-ins are skipped.

    Raises Unavailable(IMAGE_BUILD_FAILED) for a name that is neither built in nor a module.
    """
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in builtin or name in order:
            return
        if name not in deps:
            raise Unavailable("IMAGE_BUILD_FAILED", f"kernel has no module or built-in {name}")
        if name in path:
            raise Unavailable("IMAGE_BUILD_FAILED", f"module dependency cycle: {path}")
        for dep in deps[name]:
            visit(dep, (*path, name))
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order
