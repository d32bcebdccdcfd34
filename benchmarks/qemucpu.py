"""CPU time a QEMU process spends during a move: ``QemuCpu(pid)`` samples
``/proc/<pid>/stat`` (user + system time) every 50 ms in a thread until ``stop()`` or the
process is gone (a migrated-away source is released at the end of its move); ``stop()``
returns the seconds of CPU between the first sample and the last one seen."""

from __future__ import annotations

import os
import threading

TICK_S = 1 / os.sysconf("SC_CLK_TCK")
INTERVAL_S = 0.05


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far; None when it is gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime (fields 14, 15)


class QemuCpu:
    """Samples one process's CPU time until stopped (see the module doc)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first = cpu_seconds(pid)
        self.last = self.first
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(INTERVAL_S):
            now = cpu_seconds(self.pid)
            if now is None:
                return
            self.last = now

    def stop(self) -> float | None:
        """CPU seconds used while sampled (None if the process was gone at the start)."""
        self.done.set()
        self.thread.join(timeout=5)
        if self.first is None or self.last is None:
            return None
        return round(self.last - self.first, 3)
