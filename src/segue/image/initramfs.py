"""The guest initramfs: a gzip-compressed newc cpio archive written in Python.

Writing the archive ourselves lets it hold device nodes (``/dev/console``, which the kernel opens
for PID 1 before any devtmpfs is mounted) and makes it reproducible: every entry has mtime 0 and
root ownership, whoever builds it.
"""

from __future__ import annotations

import gzip
import stat
from collections.abc import Iterable
from dataclasses import dataclass

_NEWC_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"

# Directories /init expects to exist before it mounts anything.
BASE_DIRS = (
    "bin",
    "dev",
    "etc",
    "lib",
    "lib/modules",
    "proc",
    "run",
    "sbin",
    "sys",
    "tmp",
    "usr",
    "usr/bin",
    "usr/sbin",
    "var",
)


@dataclass(frozen=True)
class Entry:
    """One archive member: ``path`` relative to /, ``mode`` with its file type bits.

    ``data`` is the content of a file or the target of a symlink; ``rdev`` is (major, minor)
    of a device node.
    """

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def regular(path: str, data: bytes, executable: bool = False) -> Entry:
    return Entry(path, stat.S_IFREG | (0o755 if executable else 0o644), data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def char_device(path: str, major: int, minor: int) -> Entry:
    return Entry(path, stat.S_IFCHR | 0o600, rdev=(major, minor))


def newc_archive(entries: Iterable[Entry]) -> bytes:
    """The entries as an uncompressed newc cpio archive, trailer included."""
    chunks: list[bytes] = []
    for ino, entry in enumerate(entries, start=1):
        chunks.append(_member(ino, entry))
    chunks.append(_member(0, Entry(_TRAILER, 0)))
    return b"".join(chunks)


def gzip_archive(entries: Iterable[Entry]) -> bytes:
    """The entries as a gzip-compressed newc archive (mtime 0, so the bytes are reproducible)."""
    return gzip.compress(newc_archive(entries), compresslevel=6, mtime=0)


def _member(ino: int, entry: Entry) -> bytes:
    name = entry.path.strip("/").encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev, len(name), 0)
    header = _NEWC_MAGIC + b"".join(b"%08x" % value for value in fields)
    return _pad(header + name) + _pad(entry.data)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)
