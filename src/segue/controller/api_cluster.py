"""Cluster routes of the controller API: the CPU baseline (``segue.controller.cluster``).

``GET /cluster/baseline``: ``{model, features, cpu_model, updated_at, live_vms, raisable,
hosts: [{name, connected, missing}]}``. ``POST /cluster/baseline/raise``: the same plus
``added`` and ``removed``; Conflict ``BASELINE_NO_HOSTS`` or ``BASELINE_WOULD_LOWER``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from segue.controller import cluster
from segue.controller.config import ControllerConfig
from segue.controller.db import Database
from segue.controller.models import utcnow

router = APIRouter()


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def _timeout(request: Request) -> float:
    config: ControllerConfig = request.app.state.config
    return config.heartbeat_timeout


@router.get("/cluster/baseline")
def show_baseline(request: Request) -> dict[str, Any]:
    with _db(request).session() as s:
        return cluster.baseline_view(s, utcnow(), _timeout(request))


@router.post("/cluster/baseline/raise")
def raise_baseline(request: Request) -> dict[str, Any]:
    with _db(request).session() as s:
        return cluster.raise_baseline(s, utcnow(), _timeout(request))
