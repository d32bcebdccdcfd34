"""Everything the checks decide on, gathered beforehand by the controller (plain data).

Host facts arrive as the agent's ``GET /host`` JSON (or as the controller stored them);
``host_facts_from_dict`` reads them into ``segue.domain.host.HostFacts`` with pydantic.
Strict on types: a value of the wrong type is refused, never coerced. Lenient on parts: a
part or field the host did not report reads as empty or zero (facts stored by an older
agent), which the checks then report as a problem rather than assume fine; keys unknown here
are ignored (a newer agent may report more).

Errors: ``InvalidRequest`` (``HOST_FACTS_INVALID``) for facts with a value of the wrong type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from segue.domain.host import HostFacts
from segue.domain.validation import parse_json_data
from segue.domain.vm import VMSpec

_HOST_FACTS = TypeAdapter(HostFacts)


def host_facts_from_dict(name: str, data: Mapping[str, Any]) -> HostFacts:
    """The facts JSON of host ``name`` as ``HostFacts`` (see the module doc); ``name`` stands
    in when the facts name no host. Raises InvalidRequest (``HOST_FACTS_INVALID``)."""
    facts = {**data, "name": data.get("name") or name}
    return parse_json_data(_HOST_FACTS, facts, "HOST_FACTS_INVALID", f"facts of host {name}",
                           "the agent reported facts of another shape: run the same Segue "
                           "version on the agent and the controller")


@dataclass(frozen=True)
class HostRecord:
    """A host as the controller knows it, with its facts (fresh from its agent when
    ``reachable``; else the last heartbeat's, and ``unreachable_reason`` says why)."""

    name: str
    connected: bool
    maintenance: bool
    migration_enabled: bool
    facts: HostFacts
    reachable: bool = True
    unreachable_reason: str = ""


@dataclass(frozen=True)
class PathProbe:
    """A TCP connect from the source's migration address to a one-shot listener on the
    destination's (``ok`` False with ``error`` when it failed)."""

    ok: bool
    dest_address: str
    port: int
    source_address: str | None = None
    rtt_ms: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class MigrationContext:
    """One question: can ``vm`` (``vm_state`` on ``source``) move to ``dest`` now?

    ``vm_cpu_features``: the features the VM's QEMU exposes (None: the source could not say).
    ``reserved_mib``: memory (with QEMU overhead) held for other migrations into ``dest``.
    ``probe``: the migration path test (None: not tried, as a NIC was already unusable).
    ``in_flight``: the id of another active migration of this VM, if any.
    ``files_visible``: ``"datastore:path"`` of each VM file -> whether the destination sees it
    (None: not asked, as the destination did not answer).
    ``tls``: the migration is to be encrypted (both hosts need credentials).
    """

    vm: VMSpec
    vm_state: str
    vm_cpu_features: frozenset[str] | None
    source: HostRecord
    dest: HostRecord
    reserved_mib: int = 0
    probe: PathProbe | None = None
    in_flight: str | None = None
    files_visible: dict[str, bool] | None = None
    tls: bool = False
