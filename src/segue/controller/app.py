"""The controller's HTTP app (FastAPI): inventory, migrations, cluster baseline, users,
tokens, the audit log, hosts' joins and certificates, tags and policies, health.

The lifespan opens the database and upgrades its schema, then keeps on ``app.state``:
``config`` (ControllerConfig), ``db`` (Database), ``agents`` (AgentPool), ``trust``
(``controller.trust.ClusterTrust``: the CAs client certificates are verified against and
the revoked certificates, in memory; the pool sends nothing to a revoked host), ``tg``
(the asyncio.TaskGroup that owns every background task: the stale-host watcher, the audit
log's pruning, migration jobs and evacuations), ``migrations`` (MigrationService) and
``evacuations`` (``controller.evacuation.Evacuations``, resumed at start). Leaving the
lifespan cancels running migration jobs (each rolls back, shielded) and waits for them.

Access: the access gate (``segue.controller.gate``) answers 401 to every request over TCP
without valid credentials but ``/health``'s, and writes every state-changing request to the
audit log; each route declares its permission (``segue.controller.authz``), and an app with
a route that declares none is refused at creation (RuntimeError).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from segue import __version__
from segue.api.cluster import ControllerHealth
from segue.clients.base import ClientTLS
from segue.controller import audit, inventory, reconcile
from segue.controller.agents import AgentPool
from segue.controller.api_access import router as access_router
from segue.controller.api_cluster import router as cluster_router
from segue.controller.api_inventory import router as inventory_router
from segue.controller.api_join import router as join_router
from segue.controller.api_maintenance import router as maintenance_router
from segue.controller.api_migrations import router as migrations_router
from segue.controller.api_placement import router as placement_router
from segue.controller.api_policies import router as policies_router
from segue.controller.api_rules import router as rules_router
from segue.controller.api_trust import router as trust_router
from segue.controller.authz import check_routes_declared, public
from segue.controller.config import AUDIT_PRUNE_INTERVAL, AuditConfig, ControllerConfig
from segue.controller.db import Database
from segue.controller.evacuation import Evacuations
from segue.controller.gate import AccessGate
from segue.controller.inventory_service import InventoryService
from segue.controller.migrations import MigrationService
from segue.controller.models import utcnow
from segue.controller.trust import load_trust
from segue.domain.errors import SegueError
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


async def prune_audit_log(db: Database, retention: AuditConfig) -> None:
    """Drop audit entries beyond the retention, at start and every AUDIT_PRUNE_INTERVAL s,
    until cancelled."""
    max_age = timedelta(days=retention.max_age_days)
    while True:
        try:
            if pruned := await db.run(audit.prune, utcnow(), max_age, retention.max_entries):
                log.info("pruned %d audit entries beyond the retention", pruned)
        except Exception:
            log.exception("pruning the audit log failed; trying again later")
        await asyncio.sleep(AUDIT_PRUNE_INTERVAL)


def controller_tls(pki_dir: Path | None) -> ClientTLS | None:
    """The controller's side of mutual TLS towards agents: its own credential set in
    ``pki_dir`` (None, logged, without one: agents are then reached over plain HTTP only)."""
    if pki_dir is None:
        return None
    try:
        return ClientTLS(pki_dir)
    except SegueError as err:
        log.warning("no controller credentials in %s (%s): agents are reached without TLS",
                    pki_dir, err.message)
        return None


def create_app(config: ControllerConfig, agents: AgentPool | None = None) -> FastAPI:
    """The controller app; ``agents`` lets tests reach in-process agents."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(config.database_url)
        pool = agents or AgentPool(tls=controller_tls(config.pki_dir))
        try:
            await db.call(db.upgrade, create=config.create_database)
            log.info("database %s is up to date", db.safe_url)
            app.state.config, app.state.db, app.state.agents = config, db, pool
            app.state.trust = await db.run(load_trust, config.pki_dir)
            pool.revoked = app.state.trust.revocations.is_host_revoked
            async with asyncio.TaskGroup() as tg:
                app.state.tg = tg
                watcher = tg.create_task(watch_heartbeats(db, config.heartbeat_timeout),
                                         name="watch-heartbeats")
                pruner = tg.create_task(prune_audit_log(db, config.audit),
                                        name="prune-audit-log")
                releases = tg.create_task(reconcile.run_releases(InventoryService(
                    db, pool.typed, config.heartbeat_timeout)), name="reconcile-releases")
                app.state.migrations = MigrationService(
                    db, pool, tg, config.heartbeat_timeout, config.limits,
                    max_auto_downtime_ms=config.max_auto_downtime_ms)
                if recovered := await app.state.migrations.recover_all():
                    log.warning("reconciling %d unfinished migration(s)", recovered)
                app.state.evacuations = Evacuations(db, app.state.migrations, tg)
                if resumed := await app.state.evacuations.resume_all():
                    log.warning("resuming %d unfinished evacuation(s)", resumed)
                try:
                    yield
                finally:
                    watcher.cancel()
                    pruner.cancel()
                    releases.cancel()
                    app.state.evacuations.stop_all()  # they resume at the next start
                    app.state.migrations.stop_all()  # running jobs roll back
        finally:
            await pool.aclose()
            db.dispose()

    app = FastAPI(title="Segue controller", version=__version__, lifespan=lifespan)
    install_error_handler(app)
    app.add_middleware(AccessGate)  # outside the error handler: it sees every answer
    app.include_router(inventory_router)
    app.include_router(migrations_router)
    app.include_router(cluster_router)
    app.include_router(access_router)
    app.include_router(join_router)
    app.include_router(policies_router)
    app.include_router(rules_router)
    app.include_router(placement_router)
    app.include_router(maintenance_router)
    app.include_router(trust_router)

    @app.get("/health", response_model=ControllerHealth, dependencies=[public()])
    async def health() -> ControllerHealth:
        return ControllerHealth(status="ok", version=__version__)

    check_routes_declared(app)
    return app



