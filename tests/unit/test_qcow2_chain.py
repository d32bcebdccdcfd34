"""What a qcow2 image names (segue.qemu.qcow2), and the agent's check that a qcow2 disk's
backing chain and data file stay in its datastore (segue.agent.confine.check_chain).
Images are headers written here byte by byte, as QEMU's qcow2 spec lays them out (the
component tests use qemu-img's own)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from segue.agent.confine import Roots, check_chain, vm_files
from segue.domain.errors import InvalidRequest
from segue.domain.vm import DiskSpec, VMSpec
from segue.qemu.qcow2 import (
    EXT_BACKING_FORMAT,
    EXT_DATA_FILE,
    MAGIC,
    Qcow2References,
    parse_references,
    read_references,
)


def qcow2(backing: str | None = None, backing_format: str | None = None,
          data_file: str | None = None, version: int = 3, cluster_bits: int = 9) -> bytes:
    """The first cluster of a qcow2 image: header, extensions, backing file name."""
    exts = b""
    for kind, value in ((EXT_BACKING_FORMAT, backing_format), (EXT_DATA_FILE, data_file)):
        if value is not None:
            data = value.encode()
            exts += struct.pack(">II", kind, len(data)) + data + bytes(-len(data) % 8)
    exts += struct.pack(">II", 0, 0)
    length = 104 if version == 3 else 72
    name = backing.encode() if backing is not None else b""
    head = bytearray(length)
    head[:4] = MAGIC
    struct.pack_into(">IQII", head, 4, version, length + len(exts) if name else 0, len(name),
                     cluster_bits)
    if version == 3:
        struct.pack_into(">I", head, 100, length)
    out = bytes(head) + exts + name
    return (out + bytes(max(0, (1 << cluster_bits) - len(out))))[:1 << cluster_bits]


@pytest.mark.parametrize(("image", "refs"), [
    (qcow2(), Qcow2References()),
    (qcow2(version=2), Qcow2References()),
    (qcow2("base.qcow2", "qcow2"), Qcow2References("base.qcow2", "qcow2")),
    (qcow2("/etc/shadow", "raw", version=2), Qcow2References("/etc/shadow", "raw")),
    (qcow2("base.img"), Qcow2References("base.img")),  # format unrecorded: QEMU probes
    (qcow2(data_file="web1.raw"), Qcow2References(data_file="web1.raw")),
    (b"\0" * 512, None),  # raw
    (b"", None),
])
def test_references_are_read_from_the_header(image: bytes, refs: Qcow2References | None
                                             ) -> None:
    assert parse_references(image) == refs


@pytest.mark.parametrize("image", [
    MAGIC + bytes(20),  # cut short
    qcow2(version=1),
    qcow2("x" * 600, "raw"),  # the name runs past the first cluster
    qcow2("base.qcow2", "qcow2")[:110],  # extensions cut off
])
def test_a_malformed_header_is_an_error(image: bytes) -> None:
    with pytest.raises(ValueError):
        parse_references(image)


def test_only_the_first_cluster_is_read(tmp_path: Path) -> None:
    image = tmp_path / "a.qcow2"
    image.write_bytes(qcow2("b.qcow2", "qcow2", cluster_bits=12) + b"\xff" * 8192)
    assert read_references(image) == Qcow2References("b.qcow2", "qcow2")
    image.write_bytes(b"raw disk")
    assert read_references(image) is None


@pytest.fixture
def datastore(tmp_path: Path) -> Path:
    """``ds/shared`` with ``web1/`` and ``base/``; ``outside/secret`` next to it."""
    root = tmp_path / "ds" / "shared"
    for d in (root / "web1", root / "base", tmp_path / "outside"):
        d.mkdir(parents=True)
    (tmp_path / "outside" / "secret").write_bytes(b"x")
    (root / "base" / "base.raw").write_bytes(bytes(512))
    (root / "base" / "base.qcow2").write_bytes(qcow2("base.raw", "raw"))
    return root


def chain_code(datastore: Path, image: bytes | None, **extra: bytes) -> str | None:
    """The code check_chain answers for ``web1/disk0.qcow2`` holding ``image`` (None: the
    file is not there), beside ``extra`` files of web1/."""
    disk = datastore / "web1" / "disk0.qcow2"
    if image is not None:
        disk.write_bytes(image)
    for name, data in extra.items():
        (datastore / "web1" / name).write_bytes(data)
    roots = Roots({"shared": datastore})
    try:
        check_chain("disks[0].path", DiskSpec("shared", "web1/disk0.qcow2"), disk, roots)
    except InvalidRequest as err:
        assert err.details["field"] == "disks[0].path" and err.hint
        return err.code
    return None


OUT, REFUSED = "PATH_OUTSIDE_DATASTORE", "DISK_CHAIN_REFUSED"


Image = Callable[[Path], bytes | None]  # the disk's bytes, given its datastore's root


@pytest.mark.parametrize(("image", "code"), [
    (lambda _: None, None),  # not there: DISK_NOT_FOUND is admission's
    (lambda _: qcow2(), None),
    (lambda _: qcow2("../base/base.qcow2", "qcow2"), None),  # a chain of two, inside
    (lambda _: qcow2("../base/base.raw", "raw"), None),
    (lambda root: qcow2(f"{root}/base/base.raw", "raw"), None),  # absolute, inside
    (lambda _: qcow2(data_file="disk0.data"), None),
    (lambda _: b"raw bytes", None),  # no qcow2 image: QEMU refuses it itself
    (lambda _: qcow2("/etc/shadow", "raw"), OUT),  # a guest would read the host's file
    (lambda _: qcow2("../../../outside/secret", "raw"), OUT),
    (lambda _: qcow2("link", "raw"), OUT),  # a symlink out of the datastore
    (lambda root: qcow2(f"{root}/../other/d.raw", "raw"), OUT),  # another datastore
    (lambda _: qcow2(data_file="/etc/shadow"), OUT),  # written by the guest, even
    (lambda _: qcow2("../.segue-datastore.json", "raw"), "PATH_RESERVED"),
    (lambda _: qcow2("../base/base.raw"), REFUSED),  # format unrecorded: QEMU would probe
    (lambda _: qcow2("../base/base.raw", "vmdk"), REFUSED),  # a format naming files itself
    (lambda _: qcow2('json:{"file.filename": "/etc/shadow"}', "raw"), REFUSED),
    (lambda _: qcow2("nbd:127.0.0.1:10809", "raw"), REFUSED),
    (lambda _: qcow2("self.qcow2", "qcow2"), REFUSED),  # a loop: deeper than any chain
    (lambda _: qcow2(version=1), REFUSED),
])
def test_a_qcow2_disk_names_only_files_of_its_datastore(datastore: Path, image: Image,
                                                        code: str | None) -> None:
    (datastore / "web1" / "link").symlink_to(datastore.parent.parent / "outside" / "secret")
    (datastore / ".segue-datastore.json").write_text("{}")
    assert chain_code(datastore, image(datastore),
                      **{"self.qcow2": qcow2("self.qcow2", "qcow2")}) == code


def test_a_bad_link_deep_in_the_chain_is_found(datastore: Path) -> None:
    (datastore / "base" / "mid.qcow2").write_bytes(qcow2("/etc/shadow", "raw"))
    with pytest.raises(InvalidRequest) as err:
        check_chain("disks[0].path", DiskSpec("shared", "web1/d.qcow2"),
                    _write(datastore / "web1" / "d.qcow2", qcow2("../base/mid.qcow2", "qcow2")),
                    Roots({"shared": datastore}))
    assert err.value.code == OUT and "/etc/shadow" in err.value.message
    assert "backing file" in err.value.message


def test_a_raw_disk_is_not_read_as_qcow2(datastore: Path) -> None:
    # a raw disk's bytes are the guest's: QEMU reads no header in them
    _write(datastore / "web1" / "d.raw", qcow2("/etc/shadow", "raw"))
    spec = VMSpec(name="web1", datastore="shared",
                  disks=[DiskSpec("shared", "web1/d.raw", format="raw")])
    assert vm_files(spec, Roots({"shared": datastore})) == {
        "disks[0]": datastore / "web1" / "d.raw"}
    qcow = spec.with_changes(disks=[DiskSpec("shared", "web1/d.raw", format="qcow2")])
    with pytest.raises(InvalidRequest):
        vm_files(qcow, Roots({"shared": datastore}))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
