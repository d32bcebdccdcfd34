"""The controller's HTTP app (FastAPI): inventory, migrations, cluster baseline, health.

The lifespan opens the database and upgrades its schema, then keeps on ``app.state``:
``config`` (ControllerConfig), ``db`` (Database), ``agents`` (AgentPool), ``tg`` (the
asyncio.TaskGroup that owns every background task: the stale-host watcher and migration
jobs) and ``migrations`` (MigrationService). Leaving the lifespan cancels running
migration jobs (each rolls back, shielded) and waits for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from segue import __version__
from segue.api.cluster import ControllerHealth
from segue.controller import inventory, reconcile
from segue.controller.agents import AgentPool
from segue.controller.api_cluster import router as cluster_router
from segue.controller.api_inventory import router as inventory_router
from segue.controller.api_migrations import router as migrations_router
from segue.controller.config import ControllerConfig
from segue.controller.db import Database
from segue.controller.inventory_service import InventoryService
from segue.controller.migrations import MigrationService
from segue.controller.models import utcnow
from segue.httpapi import install_error_handler

log = logging.getLogger(__name__)
STALE_CHECK_INTERVAL = 1.0  # seconds between checks for hosts whose heartbeats stopped


async def watch_heartbeats(db: Database, timeout: float) -> None:
    """Mark silent hosts disconnected, every STALE_CHECK_INTERVAL s, until cancelled."""
    while True:
        try:
            await db.run(inventory.mark_stale_hosts, utcnow(), timeout)
        except Exception:
            log.exception("checking for stale hosts failed; trying again")
        await asyncio.sleep(STALE_CHECK_INTERVAL)


def create_app(config: ControllerConfig, agents: AgentPool | None = None) -> FastAPI:
    """The controller app; ``agents`` lets tests reach in-process agents."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(config.database_url)
        pool = agents or AgentPool()
        try:
            await db.call(db.upgrade, create=config.create_database)
            log.info("database %s is up to date", db.safe_url)
            app.state.config, app.state.db, app.state.agents = config, db, pool
            async with asyncio.TaskGroup() as tg:
                app.state.tg = tg
                watcher = tg.create_task(watch_heartbeats(db, config.heartbeat_timeout),
                                         name="watch-heartbeats")
                releases = tg.create_task(reconcile.run_releases(InventoryService(
                    db, pool.typed, config.heartbeat_timeout)), name="reconcile-releases")
                app.state.migrations = MigrationService(
                    db, pool, tg, config.heartbeat_timeout, config.limits,
                    max_auto_downtime_ms=config.max_auto_downtime_ms)
                if recovered := await app.state.migrations.recover_all():
                    log.warning("reconciling %d unfinished migration(s)", recovered)
                try:
                    yield
                finally:
                    watcher.cancel()
                    releases.cancel()
                    app.state.migrations.stop_all()  # running jobs roll back
        finally:
            await pool.aclose()
            db.dispose()

    app = FastAPI(title="Segue controller", version=__version__, lifespan=lifespan)
    install_error_handler(app)
    app.include_router(inventory_router)
    app.include_router(migrations_router)
    app.include_router(cluster_router)

    @app.get("/health", response_model=ControllerHealth)
    async def health() -> ControllerHealth:
        return ControllerHealth(status="ok", version=__version__)

    return app



