"""Cluster routes of the controller API: the CPU baseline (``segue.controller.cluster``).

``GET /cluster/baseline``: ``segue.api.cluster.BaselineView``.
``POST /cluster/baseline/raise``: ``RaisedBaselineView`` (the same plus ``added`` and
``removed``); Conflict ``BASELINE_NO_HOSTS`` or ``BASELINE_WOULD_LOWER``.
Permissions: ``cluster read``, ``cluster admin`` to raise (``segue.controller.authz``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from segue.api.cluster import BaselineView, RaisedBaselineView
from segue.controller import cluster
from segue.controller.authz import requires
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


@router.get("/cluster/baseline", response_model=BaselineView,
            dependencies=[requires("cluster", "read")])
async def show_baseline(request: Request) -> BaselineView:
    return await _db(request).run(cluster.baseline_view, utcnow(), _timeout(request))


@router.post("/cluster/baseline/raise", response_model=RaisedBaselineView,
             dependencies=[requires("cluster", "admin")])
async def raise_baseline(request: Request) -> RaisedBaselineView:
    return await _db(request).run(cluster.raise_baseline, utcnow(), _timeout(request))
