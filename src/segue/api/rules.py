"""The controller's bodies of placement rules and placement answers
(``segue.placement``).

``RuleBody``: ``POST /rules`` (one rule; refused when malformed, ``RULE_INVALID``, or when
the set it would join cannot be met, with the conflict's code); ``RuleView`` answers it and
``GET /rules``. ``PlacementAnswer``: ``GET /vms/{name}/placement`` (a VM that runs) and
``POST /placement`` (``PlacementBody``: a VM not defined yet), the choice of a create without
a host or a migration without a destination: every host, scored or excluded
with its reasons.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from segue.api.base import Name, RequestModel, ResponseModel
from segue.api.vm import VMSpecBody

RuleKind = Literal["affinity", "anti-affinity", "vm-host"]
Strength = Literal["must", "should"]


class RuleBody(RequestModel):
    """A rule: its VMs (by name and/or by a VM tag) and, for ``vm-host``, the host group's
    tag."""

    name: Name
    kind: RuleKind
    strength: Strength = "must"
    vms: Annotated[list[Name], Field(max_length=64)] = []
    vm_tag: Name | None = None
    host_tag: Name | None = None


class RuleView(ResponseModel):
    name: str
    kind: str
    strength: str
    vms: list[str]
    vm_tag: str | None = None
    host_tag: str | None = None
    created_at: datetime
    created_by: str


class PlacementBody(RequestModel):
    """``POST /placement``: where would a new VM of ``spec``, tagged ``tags``, go?"""

    spec: VMSpecBody
    tags: Annotated[list[Name], Field(max_length=64)] = []


class ReasonView(ResponseModel):
    """Why a host is excluded, or which should rule it breaks: ``kind`` is check,
    host_state, capacity, policy or rule (``rule`` names the rule)."""

    kind: str
    code: str
    message: str
    hint: str = ""
    rule: str | None = None


class CandidateView(ResponseModel):
    """A host the VM may go to: its score (0-100, higher is better) and load after the move
    (fractions of memory and of the vCPU bound), should rules it breaks, warnings' codes."""

    host: str
    score: float
    memory_use: float
    vcpu_use: float
    broken_should: list[ReasonView] = []
    warnings: list[str] = []


class ExcludedView(ResponseModel):
    host: str
    reasons: list[ReasonView]


class PlacementAnswer(ResponseModel):
    """Every host for ``vm``: candidates best first (``choice``: the first, None if there is
    none), the excluded by name. ``source``: the VM's host (None: a new VM)."""

    vm: str
    source: str | None = None
    choice: str | None = None
    candidates: list[CandidateView] = []
    excluded: list[ExcludedView] = []
