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

Every peer runs through Segue's own migration job (``segue.engine.job``), as Segue's policy
does: ``PeerPolicy`` is the policy object the job is given for a peer (its settings fixed up
front, nothing measured, its manager's escalation and give-up on every sample).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from segue.api.agent import ParameterValue
from segue.domain.host import HostFacts
from segue.engine.policies import Plan
from segue.engine.policy import Action, Settings
from segue.engine.progress import Progress

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
    parameters: dict[str, ParameterValue]
    notes: str = ""
    extra: dict[str, ParameterValue] = field(default_factory=dict)

    @property
    def downtime_ms(self) -> int:
        """The downtime target the peer starts with."""
        return int(self.parameters["downtime-limit"])

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


class PeerPolicy:
    """A peer as the policy of a Segue migration job (``segue.engine.policies``): the peer's
    capabilities and parameters on both QEMUs, nothing measured, and on every sample what
    the peer's manager does: raise the downtime target (``Peer.next_downtime_ms``) or give up
    (``Peer.give_up``). Times count from the first sample (the peer's manager starts its
    clock at ``migrate``). Post-copy is never started."""

    measures = False

    def __init__(self, peer: Peer, ram_bytes: int) -> None:
        self.peer = peer
        self.ram_bytes = ram_bytes
        self._downtime = peer.downtime_ms
        self._t0: float | None = None
        self._best_remaining = 1 << 62
        self._iteration = 0
        self._best_sent, self._best_at = -1, 0.0

    @property
    def name(self) -> str:
        return self.peer.name

    @property
    def downtime_ms(self) -> int:
        return self._downtime

    def choose_streams(self, source: HostFacts, dest: HostFacts) -> str:
        return f"{self.peer.name}'s own settings, whatever the hosts"

    def plan(self, memory: int, link_bps: float | None, dirty_bps: float | None,
             source: HostFacts) -> Plan:
        return Plan({"peer": self.peer.name}, ())

    def settings(self) -> Settings:
        return Settings(dict(self.peer.capabilities), dict(self.peer.parameters),
                        (f"{self.peer.name}'s defaults" + (f": {self.peer.notes}"
                                                          if self.peer.notes else ""),))

    def decide(self, progress: Progress, elapsed_s: float) -> list[Action]:
        """The peer's manager on one sample: give up, or raise the downtime target."""
        if self._t0 is None:
            self._t0, self._best_at = elapsed_s, elapsed_s
        elapsed = elapsed_s - self._t0
        changed = progress.iteration != self._iteration
        self._iteration = progress.iteration
        if progress.transferred > self._best_sent:
            self._best_sent, self._best_at = progress.transferred, elapsed_s
        why = self.peer.give_up(elapsed, elapsed_s - self._best_at, self.ram_bytes)
        if why is not None:
            return [Action("abort", why, code="MIGRATION_PEER_GAVE_UP")]
        stalled = progress.remaining >= self._best_remaining and changed
        self._best_remaining = min(self._best_remaining, progress.remaining)
        target = self.peer.next_downtime_ms(self._downtime, stalled, elapsed, self.ram_bytes)
        if target is None or target == self._downtime:
            return []
        before, self._downtime = self._downtime, target
        return [Action("set_parameters", f"{self.peer.name}: downtime target {before} -> "
                                         f"{target} ms", {"downtime-limit": target})]

    def request_postcopy(self, reason: str) -> None:
        """Peers here never switch to post-copy (it is not allowed in their jobs)."""
