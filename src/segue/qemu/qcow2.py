"""What a qcow2 image names besides itself: its backing file (and that file's format) and
an external data file. QEMU opens both when it opens the image, wherever they are, so the
agent checks them as it checks the disk itself (``segue.agent.confine``).

The header (QEMU's ``docs/interop/qcow2.txt``), big-endian: magic ``QFI\\xfb``, version
(2 or 3), the backing file name's offset (u64) and size (u32), the cluster size's log2 at
byte 20; from version 3 the header's length at byte 100. Header extensions follow the
header, each a type (u32), a length (u32) and the data padded to 8 bytes, up to type 0:
``0xe2792aca`` holds the backing file's format, ``0x44415441`` the data file's name. QEMU
keeps the backing file name and the extensions in the first cluster (it refuses an image
that does not), so that cluster is all that is read.

Errors: ``parse_references`` raises ValueError for a qcow2 header it cannot read;
``read_references`` also raises OSError when the file cannot be read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"QFI\xfb"
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_DATA_FILE = 0x44415441
V2_HEADER_LENGTH = 72
MAX_CLUSTER_BITS = 21  # 2 MiB, QEMU's largest cluster


@dataclass(frozen=True)
class Qcow2References:
    """The files a qcow2 image names (None: none)."""

    backing_file: str | None = None
    backing_format: str | None = None  # None: QEMU would guess it by probing the file
    data_file: str | None = None


def parse_references(head: bytes) -> Qcow2References | None:
    """The references in ``head``, the start (first cluster) of an image; None when it is no
    qcow2 image. Raises ValueError for a qcow2 header that is cut short or malformed."""
    if head[:4] != MAGIC:
        return None
    if len(head) < V2_HEADER_LENGTH:
        raise ValueError("the qcow2 header is cut short")
    version, backing_offset, backing_size = struct.unpack_from(">IQI", head, 4)
    if version not in (2, 3):
        raise ValueError(f"qcow2 version {version} is not 2 or 3")
    backing = None
    if backing_offset:
        backing = _text(head, backing_offset, backing_size, "backing file name")
    start = V2_HEADER_LENGTH if version == 2 else struct.unpack_from(">I", head, 100)[0]
    extensions = _extensions(head, start)
    fmt, data = extensions.get(EXT_BACKING_FORMAT), extensions.get(EXT_DATA_FILE)
    return Qcow2References(backing, fmt.decode() if fmt is not None else None,
                           data.decode() if data is not None else None)


def _text(head: bytes, offset: int, size: int, what: str) -> str:
    if offset + size > len(head):
        raise ValueError(f"the {what} lies outside the first cluster")
    return head[offset:offset + size].decode()


def _extensions(head: bytes, pos: int) -> dict[int, bytes]:
    """The header extensions from ``pos`` on, by type (up to the end marker)."""
    out: dict[int, bytes] = {}
    while True:
        if pos + 8 > len(head):
            raise ValueError("the qcow2 header extensions run past the first cluster")
        kind, length = struct.unpack_from(">II", head, pos)
        if kind == EXT_END:
            return out
        if pos + 8 + length > len(head):
            raise ValueError(f"header extension {kind:#x} runs past the first cluster")
        out[kind] = head[pos + 8:pos + 8 + length]
        pos += 8 + (length + 7) // 8 * 8


def read_references(path: Path) -> Qcow2References | None:
    """The references of the image at ``path`` (None: it is no qcow2 image); raises OSError
    if it cannot be read, ValueError for a malformed header."""
    with path.open("rb") as f:
        head = f.read(V2_HEADER_LENGTH)
        if head[:4] != MAGIC or len(head) < V2_HEADER_LENGTH:
            return parse_references(head)
        cluster_bits = struct.unpack_from(">I", head, 20)[0]
        if not 9 <= cluster_bits <= MAX_CLUSTER_BITS:
            raise ValueError(f"qcow2 cluster bits {cluster_bits} out of range")
        return parse_references(head + f.read((1 << cluster_bits) - V2_HEADER_LENGTH))
