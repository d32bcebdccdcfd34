"""The cluster's downtime bound (``max_auto_downtime_ms`` in controller.toml) reaches every
migration job's policy the controller runs, unless the request sets its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from segue.api.migration import MigrationOptionsBody
from segue.controller.app import create_app
from segue.controller.config import ControllerConfig
from segue.controller.migration_store import StoredJob
from segue.engine.context import JobSpec
from segue.engine.phases import Phase
from segue.engine.policies import SeguePolicy


@pytest.mark.parametrize(("configured", "requested", "bound"), [
    (None, None, 300),  # no key: 300 ms
    (150, None, 150),  # the cluster's
    (150, 1000, 1000),  # the request's own
])
async def test_the_clusters_bound_reaches_the_jobs_policy(
        tmp_path: Path, configured: int | None, requested: int | None, bound: int) -> None:
    keys = {} if configured is None else {"max_auto_downtime_ms": configured}
    app = create_app(ControllerConfig(create_database=True,
                                      database_url=f"sqlite:///{tmp_path}/c.db", **keys))
    async with app.router.lifespan_context(app):
        options = MigrationOptionsBody(max_downtime_ms=requested)
        stored = StoredJob(JobSpec("j1", "web1", "host1", "host2", options), Phase.CHECK,
                           "http://host1:7600", "http://host2:7600")
        job = app.state.migrations.runner.job(stored)
        assert isinstance(job.policy, SeguePolicy)
        assert job.policy.bound_ms == bound
        assert job.policy.settings().parameters["downtime-limit"] <= bound
