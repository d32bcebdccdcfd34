"""Whether a disk file can be opened with O_DIRECT, which decides QEMU's cache mode for it.

A VM's disks lie on shared storage that the migration's source and destination both open.
With the host page cache in the way (``cache.direct=off``), the destination may read blocks
its own cache kept from before the source's last writes; with O_DIRECT (``cache.direct=on``)
every read and write goes to the storage itself, so that is what ``segue.qemu.argv`` asks for.
Some filesystems refuse O_DIRECT (EINVAL at open: tmpfs before Linux 6.6, some FUSE
filesystems); QEMU would then fail to start, so such a disk gets ``cache.direct=off`` and a
warning in the log instead.

The probe opens the disk file itself read-only with O_DIRECT: it writes nothing on the
datastore, and it tests the very filesystem QEMU will open (a disk may be a symlink to
another one). Nothing here raises: a file that cannot be probed at all (missing, unreadable)
gets ``cache.direct=off`` with a warning, and QEMU reports the real problem when it opens it.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

Opener = Callable[[str, int], int]

# What open(2) answers when the filesystem does not do O_DIRECT.
REFUSED = frozenset({errno.EINVAL, errno.EOPNOTSUPP})


def probe_direct_io(path: Path, opener: Opener = os.open,
                    closer: Callable[[int], None] = os.close) -> bool | OSError:
    """True when ``path`` opens read-only with O_DIRECT, False when its filesystem refuses
    O_DIRECT, or the OSError of an open that failed for another reason."""
    try:
        fd = opener(str(path), os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as err:
        return False if err.errno in REFUSED else err
    closer(fd)
    return True


def disk_cache_direct(files: Sequence[Path], opener: Opener = os.open,
                      closer: Callable[[int], None] = os.close) -> tuple[bool, ...]:
    """For each disk file, whether QEMU should open it with ``cache.direct=on``; every disk
    that cannot is named in a warning with the reason."""
    modes = []
    for path in files:
        found = probe_direct_io(path, opener, closer)
        if found is False:
            log.warning("disk %s: its filesystem refuses O_DIRECT, so QEMU opens it through "
                        "the host page cache (cache.direct=off); on storage shared between "
                        "hosts, a migration's destination could read stale blocks: put "
                        "disks on a filesystem with O_DIRECT", path)
        elif isinstance(found, OSError):
            log.warning("disk %s: cannot probe O_DIRECT (%s), opening it with "
                        "cache.direct=off", path, found)
        modes.append(found is True)
    return tuple(modes)
