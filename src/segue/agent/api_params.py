"""Path and query parameters of the agent's routes, bounded (``segue.agent.app``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

# A VM's name as the wire models bound it (``segue.api.base.Name``); the stricter rules of
# a new VM's name are ``segue.domain.vm.validate_vm_spec``'s.
VMName = Annotated[str, Path(min_length=1, max_length=64,
                             pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
StopTimeout = Annotated[float, Query(gt=0, le=3600, allow_inf_nan=False)]
SerialLines = Annotated[int, Query(ge=1, le=10_000)]
EventSeq = Annotated[int, Query(ge=0, le=2**63 - 1)]
CalcTimeMs = Annotated[int, Query(ge=50, le=60_000)]  # QEMU samples 50 ms at least
# the lease generation a caller believes current (``segue.agent.leases``)
LeaseGeneration = Annotated[int | None, Query(ge=0, le=2**63 - 1)]
