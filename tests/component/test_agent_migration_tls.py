"""Encrypted migration at the agents: two agents with credential sets of one cluster, their
fake QEMUs migrating over loopback (``fake_migration.py`` refuses a stream whose TLS does
not match the destination's setup). Each fake notes every QMP command it gets in
``qmp-journal.jsonl`` beside its pidfile, so the order of what each agent sent is read
back, and what it removed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from asgi_scopes import local_transport
from test_agent_migration import (
    FAST,
    HANDOVER,
    SLOW,
    Agent,
    host_config,
    prepare,
    refused,
    running_vm,
    state_is,
    status_is,
    wait_for,
)

from segue.agent.app import create_app
from segue.agent.facts import QemuCapabilities
from segue.api.qemu import MigrationStatus
from segue.domain.errors import Unavailable
from segue.domain.vm import VMState
from segue.security import pki, store
from segue.security.pki import Identity
from segue.security.store import Credentials

if TYPE_CHECKING:
    from conftest import Lab

MID = HANDOVER["migration_id"]
CREDS, AUTHZ = f"segue-tls-{MID}", f"segue-authz-{MID}"


def cluster_sets(lab: Lab, *hosts: str) -> dict[str, Path]:
    """A CA of cluster ``ct`` and a credential set per host; each host's pki_dir."""
    now = datetime.now(UTC)
    ca = store.init_cluster(lab.root / "pki-controller", "ct", now)
    dirs = {}
    for host in hosts:
        key = pki.generate_key()
        csr = pki.create_request(Identity.host(host), key)
        cert = pki.issue_host_certificate(ca, csr, host, now)
        dirs[host] = lab.root / f"pki-{host}"
        store.install_credentials(dirs[host], Credentials(key, cert, ca.cert), now)
    return dirs


@asynccontextmanager
async def agent_on(lab: Lab, caps: QemuCapabilities, host: str, **changes: object
                   ) -> AsyncIterator[Agent]:
    """One agent app for ``host``, called through its unix socket (root on the host: an
    agent with credentials takes TCP commands from the controller's certificate only)."""
    app = create_app(host_config(lab, host, **changes), caps)
    async with app.router.lifespan_context(app):
        transport = local_transport(app)
        async with Agent("http://agent", transport=transport, timeout=60) as client, \
                httpx.AsyncClient(transport=transport, base_url="http://agent") as raw:
            client.raw = raw
            yield client


def journal(lab: Lab, host: str, name: str = "web1") -> list[tuple[str, dict[str, Any]]]:
    path = lab.root / host / "vms" / name / "qmp-journal.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [(entry["execute"], entry["arguments"]) for entry in lines]


def tls_part(commands: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, Any]]:
    """The commands about TLS objects and parameters, with the arguments that matter."""
    out: list[tuple[str, Any]] = []
    for name, args in commands:
        if name in ("object-add", "object-del"):
            out.append((name, args.get("id")))
        elif name == "migrate-set-parameters" and any(k.startswith("tls-") for k in args):
            out.append((name, {k: v for k, v in args.items() if k.startswith("tls-")}))
        elif name in ("migrate", "migrate-incoming", "migrate_cancel"):
            out.append((name, None))
    return out


async def test_both_sides_set_up_tls_in_order_and_clean_up(lab: Lab, caps: QemuCapabilities
                                                           ) -> None:
    pki_dirs = cluster_sets(lab, "host1", "host2")
    async with agent_on(lab, caps, "host1", pki_dir=pki_dirs["host1"]) as src, \
            agent_on(lab, caps, "host2", pki_dir=pki_dirs["host2"]) as dst:
        info = await running_vm(src, lab)
        incoming = await dst.prepare_incoming(info.spec, MID, {}, {}, tls_peer="host1")
        assert incoming.tls is True
        dst_set = store.current_credentials(pki_dirs["host2"]).dir
        adds = {a["id"]: a for n, a in journal(lab, "host2") if n == "object-add"}
        assert adds[CREDS] == {"qom-type": "tls-creds-x509", "id": CREDS, "endpoint": "server",
                               "dir": str(dst_set), "verify-peer": True}
        assert adds[AUTHZ]["identity"] == "O=ct,OU=host,CN=host1"
        assert tls_part(journal(lab, "host2")) == [
            ("object-add", CREDS), ("object-add", AUTHZ),
            ("migrate-set-parameters", {"tls-creds": CREDS, "tls-authz": AUTHZ,
                                        "tls-hostname": ""}),
            ("migrate-incoming", None)]

        started = await src.start_migration("web1", incoming.uri, {}, FAST, **HANDOVER,
                                            tls=True)
        assert started.tls is True
        await wait_for(src, "web1", status_is(MigrationStatus.COMPLETED))
        src_set = store.current_credentials(pki_dirs["host1"]).dir
        assert tls_part(journal(lab, "host1")) == [
            ("migrate-set-parameters", {"tls-creds": "", "tls-hostname": "", "tls-authz": ""}),
            ("object-add", CREDS),
            ("migrate-set-parameters", {"tls-creds": CREDS, "tls-hostname": "host2",
                                        "tls-authz": ""}),
            ("migrate", None)]
        assert next(a for n, a in journal(lab, "host1") if n == "object-add")["dir"] == \
            str(src_set)

        await wait_for(dst, "web1", state_is(VMState.RUNNING))
        await dst.claim("web1")  # the VM is host2's: its migration TLS goes
        assert tls_part(journal(lab, "host2"))[-3:] == [
            ("migrate-set-parameters", {"tls-creds": "", "tls-hostname": "", "tls-authz": ""}),
            ("object-del", AUTHZ), ("object-del", CREDS)]
        params = await dst.set_migration_parameters("web1", {})
        assert params["tls-creds"] == "" and params["tls-authz"] == ""


async def test_a_cancel_removes_the_sources_tls_and_a_plain_retry_works(
        lab: Lab, caps: QemuCapabilities) -> None:
    pki_dirs = cluster_sets(lab, "host1", "host2")
    async with agent_on(lab, caps, "host1", pki_dir=pki_dirs["host1"]) as src, \
            agent_on(lab, caps, "host2", pki_dir=pki_dirs["host2"]) as dst:
        info = await running_vm(src, lab)
        incoming = await dst.prepare_incoming(info.spec, MID, {}, {}, tls_peer="host1")
        await src.start_migration("web1", incoming.uri, {}, SLOW, **HANDOVER, tls=True)
        await wait_for(src, "web1", status_is(MigrationStatus.ACTIVE))
        cancelled = await src.cancel_migration("web1")
        assert cancelled.state is VMState.RUNNING
        assert tls_part(journal(lab, "host1"))[-3:] == [
            ("migrate_cancel", None),
            ("migrate-set-parameters", {"tls-creds": "", "tls-hostname": "", "tls-authz": ""}),
            ("object-del", CREDS)]
        assert (await src.set_migration_parameters("web1", {}))["tls-creds"] == ""
        await wait_for(dst, "web1", state_is(VMState.STOPPED))
        await dst.abort_incoming("web1")
        # the same VM, plain this time, to a plain destination
        plain = await prepare(dst, info.spec, migration_id="m-2")
        assert plain.tls is False
        view = await src.start_migration("web1", plain.uri, {}, FAST, migration_id="m-2",
                                         destination="host2")
        assert view.tls is False
        await wait_for(src, "web1", status_is(MigrationStatus.COMPLETED))


async def test_a_plain_source_is_refused_by_a_tls_destination(lab: Lab, caps: QemuCapabilities
                                                              ) -> None:
    """Both sides must agree: the destination's QEMU fails a stream without TLS, and the
    source keeps the VM running."""
    pki_dirs = cluster_sets(lab, "host1", "host2")
    async with agent_on(lab, caps, "host1", pki_dir=pki_dirs["host1"]) as src, \
            agent_on(lab, caps, "host2", pki_dir=pki_dirs["host2"]) as dst:
        info = await running_vm(src, lab)
        incoming = await dst.prepare_incoming(info.spec, MID, {}, {}, tls_peer="host1")
        await src.start_migration("web1", incoming.uri, {}, SLOW, **HANDOVER)
        await wait_for(dst, "web1", state_is(VMState.STOPPED))  # its QEMU failed and exited
        await src.cancel_migration("web1")
        assert (await src.get_vm("web1")).state is VMState.RUNNING


@pytest.mark.parametrize("side", ["source", "destination"])
async def test_a_host_without_credentials_refuses_tls_and_changes_nothing(
        lab: Lab, caps: QemuCapabilities, side: str) -> None:
    async with agent_on(lab, caps, "host1") as src, agent_on(lab, caps, "host2") as dst:
        info = await running_vm(src, lab)
        if side == "destination":
            err = await refused(dst.prepare_incoming(info.spec, MID, {}, {}, tls_peer="host1"),
                                Unavailable, "MIGRATION_TLS_UNAVAILABLE")
            assert "--no-tls" in err.hint
            assert [v.name for v in await dst.list_vms()] == []
            assert lab.qemu_pids() == [info.pid]
            return
        incoming = await prepare(dst, info.spec)
        await refused(src.start_migration("web1", incoming.uri, {}, {}, **HANDOVER, tls=True),
                      Unavailable, "MIGRATION_TLS_UNAVAILABLE")
        assert "migrate" not in [n for n, _ in journal(lab, "host1")]
        again = await src.get_vm("web1")
        assert again.state is VMState.RUNNING and again.generation == info.generation
