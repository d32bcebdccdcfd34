"""The guest kernel: Debian's cloud kernel package, fetched with apt and unpacked, not installed.

``resolve_package`` names the current ``linux-image-*-cloud-amd64`` package and version (from
``apt-cache show`` of the ``linux-image-cloud-amd64`` meta-package), ``fetch_package`` brings its
.deb into a directory (``apt-get update`` only when the lists are missing), and
``unpack_kernel`` extracts it with ``dpkg-deb -x`` and picks the kernel and the modules the
guest needs, in load order. Module dependencies come from each module's ``.modinfo`` section
(the package carries no modules.dep: depmod makes it at install time); built-in drivers come
from ``modules.builtin``. Failures raise ``Unavailable("IMAGE_BUILD_FAILED", ...)``.
"""

from __future__ import annotations

import lzma
import re
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


@dataclass(frozen=True)
class KernelCandidate:
    """The kernel package version apt would install now."""

    name: str
    version: str
    arch: str

    @property
    def deb_filename(self) -> str:
        """The file name ``apt-get download`` gives the package (epoch colon quoted)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def resolve_package() -> KernelCandidate:
    """The concrete kernel package the cloud meta-package depends on, refreshing the apt lists
    once when apt does not know the meta-package; raises IMAGE_BUILD_FAILED when it still does not.
    """
    argv = ["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE]
    try:
        candidate = parse_meta_package(run(argv, "resolving the kernel"))
    except Unavailable:
        candidate = None
    if candidate is None:
        run(["apt-get", "update"], "refreshing the apt lists")
        candidate = parse_meta_package(run(argv, "resolving the kernel"))
    if candidate is None:
        message = f"apt knows no kernel package behind {KERNEL_META_PACKAGE}"
        raise Unavailable("IMAGE_BUILD_FAILED", message, hint=_HINT)
    return candidate


def parse_meta_package(apt_cache_show: str) -> KernelCandidate | None:
    """The exact ``linux-image-*`` dependency in ``apt-cache show`` output of the meta-package
    (``Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)``), or None when there is none."""
    fields = dict(line.split(": ", 1) for line in apt_cache_show.splitlines() if ": " in line[:40])
    for dep in fields.get("Depends", "").split(","):
        match = re.fullmatch(r"\s*(linux-image-\S+)\s+\(=\s*(\S+)\)\s*", dep)
        if match:
            return KernelCandidate(match[1], match[2], fields.get("Architecture", "amd64"))
    return None


def fetch_package(candidate: KernelCandidate, into: Path) -> KernelPackage:
    """The candidate's .deb in ``into``, downloaded unless it is already there.

    Runs ``apt-get update`` and retries once when the download fails (missing lists); raises
    IMAGE_BUILD_FAILED with apt's stderr when it still fails.
    """
    into.mkdir(parents=True, exist_ok=True)
    deb = into / candidate.deb_filename
    if not deb.is_file():
        spec = f"{candidate.name}={candidate.version}"
        try:
            run(["apt-get", "download", spec], f"downloading {spec}", cwd=into)
        except Unavailable:
            run(["apt-get", "update"], "refreshing the apt lists")
            run(["apt-get", "download", spec], f"downloading {spec}", cwd=into)
    if not deb.is_file():
        message = f"apt-get download left no {deb.name} in {into}"
        raise Unavailable("IMAGE_BUILD_FAILED", message, hint=_HINT)
    return KernelPackage(candidate.name, deb)


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
