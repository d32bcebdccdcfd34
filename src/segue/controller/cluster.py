"""The cluster's CPU baseline (``segue.checks.baseline``), kept in ``cluster_settings``.

Policy:
- While no VM runs, the baseline follows the hosts: after every heartbeat it becomes the
  intersection of the features of every known host that reports CPU features (the first
  hosts to report set it even when they already run VMs).
- Once a VM runs it stays put; ``raise_baseline`` sets it to the intersection of the
  connected hosts' features, refused (Conflict ``BASELINE_WOULD_LOWER``) when that lacks a
  feature of the current baseline while VMs run on it.
- A heartbeat from a host the inventory does not know yet, whose features lack some of the
  baseline's while VMs run, is refused (Conflict ``HOST_BELOW_BASELINE``, details ``host``
  and ``missing``) before the host is added.
- A VM created with ``cpu_model`` ``baseline`` (or the default ``qemu64``) gets the baseline's
  CPU string (``resolve_cpu_model``).

Functions take an SQLAlchemy ``Session``; the caller owns the transaction.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from segue.api.cluster import BaselineHost, BaselineView, RaisedBaselineView
from segue.checks.baseline import (
    BASE_MODEL,
    Baseline,
    baseline_cpu_string,
    compute_baseline,
    missing_for_host,
)
from segue.controller import inventory
from segue.controller.cluster_models import ClusterSetting
from segue.controller.models import VM, Host
from segue.domain.errors import Conflict
from segue.domain.host import HostFacts
from segue.domain.vm import VMState

log = logging.getLogger(__name__)
BASELINE_KEY = "cpu_baseline"
BASELINE_ALIASES = frozenset({"baseline", BASE_MODEL})  # cpu_model values that mean "baseline"
LIVE_STATES = frozenset({VMState.RUNNING, VMState.PAUSED, VMState.STARTING, VMState.INMIGRATE,
                         VMState.POSTMIGRATE})  # a QEMU runs


def host_features(host: Host) -> list[str] | None:
    """The CPU features the host reported, None if its facts have none."""
    features = ((host.facts or {}).get("cpu") or {}).get("features")
    return [str(f) for f in features] if features else None


def live_vms(session: Session) -> int:
    """How many VMs of the inventory have a QEMU running."""
    return int(session.scalar(select(func.count()).select_from(VM)
                              .where(VM.state.in_(LIVE_STATES))) or 0)


def stored_baseline(session: Session) -> tuple[Baseline, datetime] | None:
    """The baseline and when it was set; None before any host reported CPU features."""
    row = session.get(ClusterSetting, BASELINE_KEY)
    if row is None:
        return None
    value = row.value
    return Baseline(str(value["model"]), frozenset(value["features"])), row.updated_at


def current_baseline(session: Session) -> Baseline:
    """The stored baseline, or the bare base model before there is one."""
    stored = stored_baseline(session)
    return stored[0] if stored else Baseline()


def _store(session: Session, baseline: Baseline, now: datetime) -> None:
    value = {"model": baseline.model, "features": sorted(baseline.features)}
    row = session.get(ClusterSetting, BASELINE_KEY)
    if row is None:
        session.add(ClusterSetting(key=BASELINE_KEY, value=value, updated_at=now))
    elif row.value != value:
        row.value, row.updated_at = value, now
    else:
        return
    log.info("CPU baseline is now %s", baseline_cpu_string(baseline))


def admit_host(session: Session, name: str, facts: HostFacts) -> None:
    """Refuse a new host below the baseline while VMs run: Conflict HOST_BELOW_BASELINE."""
    if inventory.find_host(session, name) is not None or not live_vms(session):
        return
    stored = stored_baseline(session)
    if stored is None:
        return
    missing = missing_for_host(stored[0], facts.cpu.features)
    if missing:
        raise Conflict("HOST_BELOW_BASELINE",
                       f"host {name} lacks {len(missing)} CPU feature(s) of the cluster baseline "
                       f"that running VMs use: {', '.join(missing)}",
                       "add a host that offers them; the baseline cannot drop below what "
                       "running VMs use", host=name, missing=missing)


def track_hosts(session: Session, now: datetime) -> None:
    """While no VM runs (or before there is a baseline), set the baseline to the
    intersection of every host's features."""
    if live_vms(session) and stored_baseline(session) is not None:
        return
    features = {h.name: f for h in inventory.list_hosts(session)
                if (f := host_features(h)) is not None}
    if features:
        _store(session, compute_baseline(features), now)


def _connected_features(session: Session, now: datetime, timeout: float
                        ) -> dict[str, list[str]]:
    return {h.name: host_features(h) or [] for h in inventory.list_hosts(session)
            if inventory.host_connected(h, now, timeout)}


def raise_baseline(session: Session, now: datetime, timeout: float) -> RaisedBaselineView:
    """Set the baseline to the intersection of the connected hosts' features; the new view
    with ``added`` and ``removed`` features. Raises Conflict (BASELINE_NO_HOSTS,
    BASELINE_WOULD_LOWER)."""
    hosts = _connected_features(session, now, timeout)
    if not hosts:
        raise Conflict("BASELINE_NO_HOSTS", "no host is connected",
                       "start the agents, then raise the baseline")
    old, new = current_baseline(session), compute_baseline(hosts)
    removed = sorted(old.features - new.features)
    if removed and live_vms(session):
        raise Conflict("BASELINE_WOULD_LOWER",
                       f"the connected hosts lack {len(removed)} baseline feature(s) running VMs "
                       f"may use: {', '.join(removed)}",
                       "the baseline never drops while VMs run; bring back the hosts that "
                       "offer them, or stop the VMs", removed=removed)
    _store(session, new, now)
    view = baseline_view(session, now, timeout)
    return RaisedBaselineView(**dict(view), added=sorted(new.features - old.features),
                              removed=removed)


def baseline_view(session: Session, now: datetime, timeout: float) -> BaselineView:
    """The baseline as the API shows it, with what each host lacks and what a raise adds."""
    stored = stored_baseline(session)
    baseline = stored[0] if stored else Baseline()
    hosts = inventory.list_hosts(session)
    connected = _connected_features(session, now, timeout)
    raisable = (compute_baseline(connected).features - baseline.features) if connected else set()
    return BaselineView(
        model=baseline.model, features=sorted(baseline.features),
        cpu_model=baseline_cpu_string(baseline), updated_at=stored[1] if stored else None,
        live_vms=live_vms(session), raisable=sorted(raisable),
        hosts=[BaselineHost(name=h.name, connected=h.name in connected,
                            missing=missing_for_host(baseline, host_features(h) or []))
               for h in hosts])


def resolve_cpu_model(session: Session, cpu_model: str) -> str:
    """The baseline's CPU string for ``baseline`` or ``qemu64``; any other model unchanged."""
    if cpu_model not in BASELINE_ALIASES:
        return cpu_model
    return baseline_cpu_string(current_baseline(session))
