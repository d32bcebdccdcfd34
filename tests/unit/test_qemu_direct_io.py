"""The O_DIRECT probe that decides each disk's QEMU cache mode (``segue.qemu.direct_io``)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from segue.qemu.direct_io import disk_cache_direct, probe_direct_io

DISK = Path("/srv/ds/shared/web1/disk0.raw")


class FakeOpen:
    """An ``os.open`` stand-in: per path, an fd or the errno open(2) fails with."""

    def __init__(self, outcomes: dict[str, int]) -> None:
        self.outcomes = outcomes  # path -> fd (>= 0) or -errno
        self.calls: list[tuple[str, int]] = []
        self.closed: list[int] = []

    def open(self, path: str, flags: int) -> int:
        self.calls.append((path, flags))
        result = self.outcomes[path]
        if result < 0:
            raise OSError(-result, os.strerror(-result), path)
        return result

    def close(self, fd: int) -> None:
        self.closed.append(fd)


@pytest.mark.parametrize(("outcome", "expected"), [
    (7, True),
    (-errno.EINVAL, False),
    (-errno.EOPNOTSUPP, False),
])
def test_probe_decision(outcome: int, expected: bool) -> None:
    fake = FakeOpen({str(DISK): outcome})
    assert probe_direct_io(DISK, fake.open, fake.close) is expected
    ((path, flags),) = fake.calls
    assert path == str(DISK) and flags & os.O_DIRECT
    assert flags & os.O_ACCMODE == os.O_RDONLY  # the probe never writes
    assert fake.closed == ([7] if expected else [])


def test_other_open_failures_are_returned_not_taken_for_a_refusal() -> None:
    fake = FakeOpen({str(DISK): -errno.ENOENT})
    found = probe_direct_io(DISK, fake.open, fake.close)
    assert isinstance(found, OSError) and found.errno == errno.ENOENT


def test_modes_per_disk_with_a_warning_for_each_disk_without(
        caplog: pytest.LogCaptureFixture) -> None:
    tmpfs, gone = Path("/dev/shm/data.raw"), Path("/srv/gone.raw")
    fake = FakeOpen({str(DISK): 3, str(tmpfs): -errno.EINVAL, str(gone): -errno.EACCES})
    with caplog.at_level(logging.WARNING, logger="segue.qemu.direct_io"):
        modes = disk_cache_direct([DISK, tmpfs, gone], fake.open, fake.close)
    assert modes == (True, False, False)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert str(tmpfs) in warnings[0] and "refuses O_DIRECT" in warnings[0]
    assert str(gone) in warnings[1] and "cannot probe" in warnings[1]


def test_no_disks_no_probe() -> None:
    assert disk_cache_direct([]) == ()


def test_a_real_file_probes_as_its_filesystem_opens_it(tmp_path: Path) -> None:
    disk = tmp_path / "disk0.raw"
    disk.write_bytes(bytes(4096))
    try:
        os.close(os.open(disk, os.O_RDONLY | os.O_DIRECT))
        opens = True
    except OSError as err:
        assert err.errno in (errno.EINVAL, errno.EOPNOTSUPP)
        opens = False
    assert probe_direct_io(disk) is opens
    assert disk_cache_direct([disk]) == (opens,)
    assert disk.read_bytes() == bytes(4096)
