"""Peers' default migration settings, applied through QMP in the same lab as Segue's policy.

Each peer is its QEMU capabilities and parameters at start, plus what its management layer
does while the migration runs, as their defaults and documentation describe them:

- qemu: QEMU's own defaults: 128 MiB/s bandwidth cap (QEMU 7.2: ``max-bandwidth`` 128 MiB/s),
  300 ms downtime target; nothing else.
- libvirt: virsh migrate --live defaults: bandwidth unlimited, 300 ms downtime; nothing else.
- proxmox: qm migrate: 100 ms downtime target doubled each time an iteration does not shrink
  what remains, XBZRLE compression.
- nova: OpenStack Nova's libvirt driver: downtime target raised in steps to 500 ms over time
  (live_migration_downtime 500, _steps 10, _delay 75 s per GiB), abort after
  live_migration_completion_timeout 800 s per GiB of RAM, no post-copy.
- kubevirt: bandwidth unlimited, multifd with 8 channels, 150 s progress timeout (abort when
  nothing moved for that long).

A peer that never converges is cut at the benchmark's deadline and reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3
# QEMU keeps capabilities across migrations (a VM that arrived by post-copy still has
# postcopy-ram set): every peer names each one, on or off, on both sides.
ALL_OFF = {"events": True, "postcopy-ram": False, "postcopy-preempt": False,
           "auto-converge": False, "multifd": False, "xbzrle": False}
UNLIMITED = 100 * GIB  # bytes/s: a cap out of the way


@dataclass(frozen=True)
class Peer:
    name: str
    capabilities: dict[str, bool]
    parameters: dict[str, Any]
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def next_downtime_ms(self, current_ms: int, stalled: bool, elapsed_s: float,
                         ram_bytes: int) -> int | None:
        """A raised downtime target for this peer, or None to keep the current one."""
        if self.name == "proxmox" and stalled:
            return current_ms * 2
        if self.name == "nova":
            steps, final = 10, 500
            delay_s = 75 * ram_bytes / GIB
            step = min(steps, int(elapsed_s / max(delay_s / steps, 0.001)))
            target = int(final * (step + 1) / (steps + 1))
            return target if target > current_ms else None
        return None

    def give_up(self, elapsed_s: float, since_progress_s: float, ram_bytes: int) -> str | None:
        """Why this peer's manager would abort now, or None."""
        if self.name == "nova" and elapsed_s > 800 * ram_bytes / GIB:
            return "nova completion timeout (800 s/GiB)"
        if self.name == "kubevirt" and since_progress_s > 150:
            return "kubevirt progress timeout (150 s)"
        return None


PEERS: dict[str, Peer] = {
    "qemu": Peer("qemu", ALL_OFF,
                 {"max-bandwidth": 128 * 1024**2, "downtime-limit": 300}),
    "libvirt": Peer("libvirt", ALL_OFF,
                    {"max-bandwidth": UNLIMITED, "downtime-limit": 300}),
    "proxmox": Peer("proxmox", ALL_OFF | {"xbzrle": True},
                    {"max-bandwidth": UNLIMITED, "downtime-limit": 100}),
    "nova": Peer("nova", ALL_OFF,
                 {"max-bandwidth": UNLIMITED, "downtime-limit": 46}),
    "kubevirt": Peer("kubevirt", ALL_OFF | {"multifd": True},
                     {"max-bandwidth": UNLIMITED, "downtime-limit": 300,
                      "multifd-channels": 8}),
}
