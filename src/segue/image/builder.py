"""Builds and caches the guest image: Debian's cloud kernel plus a busybox initramfs.

The initramfs holds busybox (from busybox-static) with its applet links, the checker
``guest/segue-check.c`` compiled statically at build time, the virtio and power-button modules in
load order (``lib/modules/load-order``) and ``/init`` (``init.sh`` next to this module).

Cache layout under ``cache_dir`` (default ``segue.paths.image_cache_dir()``)::

    debs/<kernel>.deb            downloaded kernel packages
    <key>/vmlinuz, initrd.img    one image per input key, with image.json describing it
    current.json                 {"key": ...} of the image built last

The key is a sha256 over every build input (see ``cache_key``); an image whose key exists is
reused as is. Images are built in a temporary directory inside the cache and renamed into place,
so a reader never sees a half-written image. Failures raise ``Unavailable("IMAGE_BUILD_FAILED")``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from segue.domain.errors import Unavailable
from segue.image import initramfs
from segue.image.initramfs import Entry
from segue.image.kernel import (
    GUEST_MODULES,
    KernelPackage,
    UnpackedKernel,
    fetch_package,
    resolve_package,
    run,
    unpack_kernel,
)
from segue.paths import image_cache_dir

log = logging.getLogger(__name__)

# Bump when the way images are assembled changes, so that old cache entries are not reused.
BUILDER_VERSION = "1"
BUSYBOX = Path("/bin/busybox")
CHECKER_SOURCE = Path(__file__).resolve().parents[3] / "guest" / "segue-check.c"
CHECKER_CFLAGS = ("-static", "-O2", "-pthread", "-Wall", "-Wextra")
CURRENT = "current.json"


@dataclass(frozen=True)
class GuestImage:
    """A built image: boot it with ``-kernel kernel -initrd initrd``."""

    kernel: Path
    initrd: Path
    key: str
    kernel_version: str


@dataclass(frozen=True)
class BuildInputs:
    """Everything an image is made from, as names and content hashes or bytes."""

    kernel_deb_name: str
    kernel_deb_sha256: str
    busybox_sha256: str
    checker_source: bytes
    init_script: bytes


def cache_key(inputs: BuildInputs) -> str:
    """The cache key of an image: sha256 (hex) over the inputs and the builder's own settings."""
    digest = hashlib.sha256()
    parts = (
        ("builder", BUILDER_VERSION.encode()),
        ("modules", ",".join(GUEST_MODULES).encode()),
        ("cflags", " ".join(CHECKER_CFLAGS).encode()),
        ("kernel_deb", inputs.kernel_deb_name.encode()),
        ("kernel_sha256", inputs.kernel_deb_sha256.encode()),
        ("busybox_sha256", inputs.busybox_sha256.encode()),
        ("checker", inputs.checker_source),
        ("init", inputs.init_script),
    )
    for label, value in parts:
        # Length-prefixed, so that no two different input sets hash the same byte stream.
        digest.update(f"{label}:{len(value)}:".encode() + value)
    return digest.hexdigest()


def build_image(cache_dir: Path | None = None, force: bool = False) -> GuestImage:
    """The image for the current inputs, built unless the cache already holds it (or ``force``).

    Needs apt (to resolve and download the kernel), dpkg-deb, gcc and /bin/busybox. Raises
    Unavailable("IMAGE_BUILD_FAILED") with the failing command's stderr when a step fails.
    """
    cache = cache_dir or image_cache_dir()
    package = fetch_package(resolve_package(), cache / "debs")
    inputs = BuildInputs(
        kernel_deb_name=package.deb.name,
        kernel_deb_sha256=_file_sha256(package.deb),
        busybox_sha256=_file_sha256(BUSYBOX),
        checker_source=_read_input(CHECKER_SOURCE),
        init_script=resources.files("segue.image").joinpath("init.sh").read_bytes(),
    )
    key = cache_key(inputs)
    image = None if force else _load(cache, key)
    if image is None:
        log.info("building guest image %s from %s", key[:12], package.deb.name)
        image = _build(cache, key, package, inputs)
    _write_atomically(cache / CURRENT, json.dumps({"key": key}).encode())
    return image


def find_image(cache_dir: Path | None = None) -> GuestImage | None:
    """The image built last (``current.json``), or None when there is none or it is incomplete.

    Runs no command and touches no network.
    """
    cache = cache_dir or image_cache_dir()
    try:
        key = json.loads((cache / CURRENT).read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _load(cache, key) if isinstance(key, str) else None


def _load(cache: Path, key: str) -> GuestImage | None:
    """The cached image with this key, or None when it is missing or incomplete."""
    folder = cache / key
    try:
        meta = json.loads((folder / "image.json").read_text())
    except (OSError, ValueError):
        return None
    kernel, initrd = folder / "vmlinuz", folder / "initrd.img"
    if not (kernel.is_file() and initrd.is_file()) or meta.get("key") != key:
        return None
    return GuestImage(kernel, initrd, key, str(meta["kernel_version"]))


def _build(cache: Path, key: str, package: KernelPackage, inputs: BuildInputs) -> GuestImage:
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        work = Path(tmp)
        kernel = unpack_kernel(package, work / "deb")
        checker = _compile_checker(inputs.checker_source, work)
        out = work / "image"
        out.mkdir()
        shutil.copyfile(kernel.vmlinuz, out / "vmlinuz")
        entries = _initramfs_entries(kernel, checker, inputs.init_script)
        (out / "initrd.img").write_bytes(initramfs.gzip_archive(entries))
        (out / "image.json").write_text(json.dumps(_describe(key, kernel), indent=2))
        _install(out, cache / key, work / "old")
    image = _load(cache, key)
    if image is None:
        raise Unavailable("IMAGE_BUILD_FAILED", f"image {key} vanished from {cache} after build")
    return image


def _compile_checker(source: bytes, work: Path) -> bytes:
    """The statically linked checker built from ``source`` (exactly the bytes hashed)."""
    src, binary = work / "segue-check.c", work / "segue-check"
    src.write_bytes(source)
    run(["gcc", *CHECKER_CFLAGS, "-o", str(binary), str(src)], "compiling the guest checker")
    return binary.read_bytes()


def _initramfs_entries(kernel: UnpackedKernel, checker: bytes, init_script: bytes) -> list[Entry]:
    """Every member of the initramfs: layout, busybox and its applets, checker, modules, /init."""
    entries = [initramfs.directory(path) for path in initramfs.BASE_DIRS]
    entries.append(initramfs.char_device("dev/console", 5, 1))
    entries.append(initramfs.regular("bin/busybox", BUSYBOX.read_bytes(), executable=True))
    entries += [initramfs.symlink(path, "/bin/busybox") for path in _busybox_applets()]
    entries.append(initramfs.regular("bin/segue-check", checker, executable=True))
    order = []
    for name, data in kernel.modules:
        entries.append(initramfs.regular(f"lib/modules/{name}.ko", data))
        order.append(f"{name}.ko\n")
    entries.append(initramfs.regular("lib/modules/load-order", "".join(order).encode()))
    entries.append(initramfs.regular("init", init_script, executable=True))
    return entries


def _busybox_applets() -> list[str]:
    """Install paths of busybox's applets (``bin/sh``, ``sbin/acpid``, ...), from busybox."""
    listing = run([str(BUSYBOX), "--list-full"], "listing busybox applets")
    return [path for path in listing.split() if path.strip("/") != "bin/busybox"]


def _describe(key: str, kernel: UnpackedKernel) -> dict[str, object]:
    return {
        "key": key,
        "kernel_version": kernel.version,
        "modules_loaded": [name for name, _ in kernel.modules],
        "modules_builtin": sorted(name for name in GUEST_MODULES if name in kernel.builtin),
    }


def _install(built: Path, final: Path, trash: Path) -> None:
    """Renames ``built`` to ``final``, moving an older ``final`` to ``trash`` (same filesystem).

    When another builder installed the same key meanwhile, its image is kept.
    """
    if final.exists():
        os.rename(final, trash)
    try:
        os.rename(built, final)
    except OSError:
        if not final.exists():
            raise


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(data)
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def _file_sha256(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as err:
        raise Unavailable("IMAGE_BUILD_FAILED", f"cannot read {path}: {err}", _hint(path)) from err


def _read_input(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise Unavailable("IMAGE_BUILD_FAILED", f"cannot read {path}: {err}", _hint(path)) from err


def _hint(path: Path) -> str:
    if path == BUSYBOX:
        return "install busybox-static"
    return "run from a source checkout of segue (the checker source lives in guest/)"
