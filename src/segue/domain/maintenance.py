"""A host's maintenance state machine (plain data and a guard).

``normal`` -> ``entering-maintenance`` (its VMs are being moved off; it takes no new VM)
-> ``in-maintenance`` (empty; still takes none) -> ``normal`` (``exit``). An evacuation that
cannot finish leaves the host ``entering-maintenance`` with the reason; entering again
retries from there, and exit from either maintenance state returns it to ``normal``.

Errors: ``Conflict`` (``MAINTENANCE_TRANSITION_INVALID``) from ``require_transition``.
"""

from __future__ import annotations

from enum import StrEnum

from segue.domain.errors import Conflict


class MaintenanceState(StrEnum):
    NORMAL = "normal"
    ENTERING = "entering-maintenance"
    IN = "in-maintenance"


TRANSITIONS: dict[MaintenanceState, frozenset[MaintenanceState]] = {
    MaintenanceState.NORMAL: frozenset({MaintenanceState.ENTERING}),
    MaintenanceState.ENTERING: frozenset({MaintenanceState.ENTERING, MaintenanceState.IN,
                                          MaintenanceState.NORMAL}),
    MaintenanceState.IN: frozenset({MaintenanceState.NORMAL}),
}
HINTS = {
    MaintenanceState.NORMAL: "the host is not in maintenance: nothing to exit",
    MaintenanceState.IN: "the host is already in maintenance; exit it first "
                         "(segue host maintenance exit HOST)",
}


def in_maintenance(state: str) -> bool:
    """Whether a host in ``state`` refuses new VMs (either maintenance state)."""
    return state != MaintenanceState.NORMAL


def require_transition(host: str, current: str, wanted: MaintenanceState) -> None:
    """Raise Conflict (``MAINTENANCE_TRANSITION_INVALID``) unless ``current`` may become
    ``wanted``."""
    now = MaintenanceState(current)
    if wanted in TRANSITIONS[now]:
        return
    raise Conflict("MAINTENANCE_TRANSITION_INVALID",
                   f"host {host} is {now.value}; it cannot become {wanted.value}",
                   HINTS.get(now, "see segue host show HOST"), host=host, state=now.value)
