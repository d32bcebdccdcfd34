"""Pure parts of the image build: the cache key, module load order, module metadata, cpio."""

from __future__ import annotations

import dataclasses
import gzip
import struct

import pytest

from segue.domain.errors import Unavailable
from segue.image import initramfs
from segue.image.builder import BuildInputs, cache_key
from segue.image.kernel import (
    KernelCandidate,
    load_order,
    modinfo_depends,
    module_name,
    parse_builtin,
    parse_meta_package,
)

INPUTS = BuildInputs(
    kernel_deb_name="linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb",
    kernel_deb_sha256="a" * 64,
    busybox_sha256="b" * 64,
    checker_source=b"int main(void) { return 0; }\n",
    init_script=b"#!/bin/sh\n",
)


def test_key_is_stable_hex_sha256() -> None:
    key = cache_key(INPUTS)
    assert key == cache_key(dataclasses.replace(INPUTS))
    assert len(key) == 64
    assert int(key, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"kernel_deb_name": "linux-image-6.1.0-57-cloud-amd64_6.1.200-1_amd64.deb"},
        {"kernel_deb_sha256": "c" * 64},
        {"busybox_sha256": "d" * 64},
        {"checker_source": b"int main(void) { return 1; }\n"},
        {"init_script": b"#!/bin/sh\necho\n"},
    ],
)
def test_every_input_changes_the_key(change: dict[str, object]) -> None:
    assert cache_key(dataclasses.replace(INPUTS, **change)) != cache_key(INPUTS)  # type: ignore[arg-type]


def test_moving_bytes_between_inputs_changes_the_key() -> None:
    moved = dataclasses.replace(INPUTS, checker_source=b"", init_script=INPUTS.checker_source)
    assert cache_key(moved) != cache_key(dataclasses.replace(INPUTS, checker_source=b""))


DEPS = {
    "virtio_ring": [],
    "virtio": ["virtio_ring"],
    "virtio_pci_modern_dev": [],
    "virtio_pci_legacy_dev": [],
    "virtio_pci": ["virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"],
    "failover": [],
    "net_failover": ["failover"],
    "virtio_net": ["virtio_ring", "virtio", "net_failover"],
}


def test_load_order_puts_dependencies_first() -> None:
    order = load_order(["virtio_net", "virtio_pci"], set(), DEPS)
    assert sorted(order) == sorted(DEPS)
    for name, deps in DEPS.items():
        assert all(order.index(dep) < order.index(name) for dep in deps)


def test_load_order_skips_builtins() -> None:
    order = load_order(["virtio_net"], {"virtio", "virtio_ring"}, DEPS)
    assert order == ["failover", "net_failover", "virtio_net"]


def test_load_order_rejects_a_missing_driver() -> None:
    with pytest.raises(Unavailable) as err:
        load_order(["virtio_blk"], set(), DEPS)
    assert err.value.code == "IMAGE_BUILD_FAILED"


def test_load_order_rejects_a_cycle() -> None:
    with pytest.raises(Unavailable):
        load_order(["a"], set(), {"a": ["b"], "b": ["a"]})


def test_module_names_and_builtin_list() -> None:
    assert module_name("virtio-rng.ko.xz") == "virtio_rng"
    assert module_name("virtio_net.ko") == "virtio_net"
    text = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/char/hw_random/virtio-rng.ko\n"
    assert parse_builtin(text) == {"virtio", "virtio_rng"}


def test_parse_meta_package() -> None:
    out = (
        "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nArchitecture: amd64\n"
        "Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\nDescription: x\n"
    )
    candidate = parse_meta_package(out)
    assert candidate == KernelCandidate("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", "amd64")
    assert candidate.deb_filename == "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"


def test_parse_meta_package_without_exact_kernel() -> None:
    assert parse_meta_package("Package: linux-image-cloud-amd64\nDepends: libc6\n") is None
    assert parse_meta_package("") is None


def test_epoch_is_quoted_in_the_deb_name() -> None:
    assert KernelCandidate("k", "1:2.0", "amd64").deb_filename == "k_1%3a2.0_amd64.deb"


def _fake_module(modinfo: bytes) -> bytes:
    """A minimal ELF64 file with a null section, .modinfo and .shstrtab."""
    names = b"\0.modinfo\0.shstrtab\0"
    data_at = 64
    names_at = data_at + len(modinfo)
    sections_at = names_at + len(names)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, sections_at)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)
    table = bytes(64)
    table += struct.pack("<IIQQQQ", 1, 1, 0, 0, data_at, len(modinfo)).ljust(64, b"\0")
    table += struct.pack("<IIQQQQ", 10, 3, 0, 0, names_at, len(names)).ljust(64, b"\0")
    return bytes(header) + modinfo + names + table


def test_modinfo_depends() -> None:
    elf = _fake_module(b"license=GPL\0depends=virtio,virtio_ring\0vermagic=6.1\0")
    assert modinfo_depends(elf) == ["virtio", "virtio_ring"]
    assert modinfo_depends(_fake_module(b"depends=\0")) == []


def test_modinfo_depends_rejects_non_modules() -> None:
    with pytest.raises(ValueError):
        modinfo_depends(b"#!/bin/sh\n" + bytes(100))


def test_newc_archive_layout() -> None:
    entries = [
        initramfs.directory("bin"),
        initramfs.regular("bin/hello", b"hi!", executable=True),
        initramfs.symlink("bin/sh", "/bin/busybox"),
        initramfs.char_device("dev/console", 5, 1),
    ]
    archive = gzip.decompress(initramfs.gzip_archive(entries))
    assert archive == initramfs.newc_archive(entries)
    assert archive.startswith(b"070701")
    assert len(archive) % 4 == 0
    assert b"bin/hello\0" in archive and b"hi!" in archive
    assert archive.rstrip(b"\0").endswith(b"TRAILER!!!")
    console = archive.index(b"dev/console") - 110
    fields = [int(archive[console + 6 + 8 * i : console + 14 + 8 * i], 16) for i in range(13)]
    assert fields[1] == 0o020600 and (fields[9], fields[10]) == (5, 1)


def test_gzip_archive_is_reproducible() -> None:
    entries = [initramfs.regular("init", b"#!/bin/sh\n", executable=True)]
    assert initramfs.gzip_archive(entries) == initramfs.gzip_archive(entries)
