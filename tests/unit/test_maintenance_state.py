"""A host's maintenance states (``segue.domain.maintenance``): the transition table and its
guard, as a table of every pair."""

from __future__ import annotations

import pytest

from segue.domain.errors import Conflict
from segue.domain.maintenance import MaintenanceState, in_maintenance, require_transition

N, E, IN = MaintenanceState.NORMAL, MaintenanceState.ENTERING, MaintenanceState.IN
ALLOWED = {(N, E), (E, E), (E, IN), (E, N), (IN, N)}


@pytest.mark.parametrize("current", list(MaintenanceState))
@pytest.mark.parametrize("wanted", list(MaintenanceState))
def test_only_the_tables_transitions_are_allowed(current: MaintenanceState,
                                                 wanted: MaintenanceState) -> None:
    if (current, wanted) in ALLOWED:
        require_transition("host1", current.value, wanted)
        return
    with pytest.raises(Conflict) as err:
        require_transition("host1", current.value, wanted)
    assert err.value.code == "MAINTENANCE_TRANSITION_INVALID"
    assert "host1" in err.value.message and current.value in err.value.message
    assert err.value.hint


def test_either_maintenance_state_refuses_new_vms() -> None:
    assert [in_maintenance(s.value) for s in MaintenanceState] == [False, True, True]
