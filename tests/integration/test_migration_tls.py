"""Encrypted live migration for real: a 2-host lab (its own CA, each host its set), a TCG
guest whose checker holds pattern pages derived from its boot id, driven with the CLI.

While a migration copies, a stream scan (``segue.lab.streamscan``) keeps what crosses the
destination's migration interface and looks for the checker's pattern pages in it: a
migration with TLS (the default) carries none of them, one with ``--no-tls`` carries them
as they are. The source's QEMU is asked during the move whether its ``tls-creds`` is set;
the job records ``encrypted``; the destination's QEMU keeps no TLS parameter once it owns
the VM; the guest's memory is verified after every move. Then the destination's
``tls-authz`` is shown to bite: a destination prepared to admit another host refuses the
source's stream, and the VM keeps running where it was.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import lab_cli
import pytest

from segue.clients.agent import AgentClient
from segue.clients.base import Blocking
from segue.domain.errors import SegueError
from segue.image.builder import build_image
from segue.lab import guests, netns
from segue.lab.lab import lab_down, lab_up, load_state
from segue.lab.streamscan import BackgroundStreamScan, checker_needles
from segue.lab.topology import MIGRATION_INTERFACE, LabPlan

pytestmark = pytest.mark.integration
LAB = "tlstest"
VM = "tls1"
PATTERN_MIB = 16  # the lab guest's default pattern region
fields = lab_cli.verify_fields


def segue(*args: str, check: bool = True, timeout: float = 300) -> Any:
    return lab_cli.run(LAB, *args, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    lab_down(LAB)
    build_image()
    lab_up(LAB, 2)
    try:
        yield load_state(LAB).plan
    finally:
        lab_down(LAB)
    assert not netns.list_namespaces(f"{LAB}-")


@pytest.fixture(scope="module")
def vm(lab: LabPlan) -> str:
    segue("lab", "vm", "create", VM, "--host", "host1", "--dirty-mbps", "8", "--hot-mib", "16",
          "--name", LAB)
    guests.wait_answering(lab, VM, timeout=180)
    return VM


def host_of(plan: LabPlan, name: str) -> str:
    return str(guests.find_vm(plan, name)[0].name)


class SourceParameters:
    """Every 100 ms while a move runs: the source QEMU's ``tls-creds`` (through its agent,
    ``migrate-set-parameters`` with nothing to set answers them all)."""

    def __init__(self, plan: LabPlan, name: str, host: str) -> None:
        self.agent = Blocking(AgentClient(f"unix:{plan.host(host).agent_socket}", timeout=5))
        self.name = name
        self.seen: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(SegueError):  # the source is released at the end
                params = self.agent.run(self.agent.client.set_migration_parameters(
                    self.name, {}))
                self.seen.append(str(params.get("tls-creds")))
            time.sleep(0.1)

    def finish(self) -> list[str]:
        self.stop.set()
        self.thread.join(timeout=10)
        self.agent.close()
        return self.seen


def migrate_scanned(plan: LabPlan, name: str, dest: str, *extra: str
                    ) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Migrate ``name`` to ``dest`` with the CLI while its migration interface is scanned for
    the guest's pattern pages; (the job, the scan, the source's tls-creds as seen)."""
    boot = fields(guests.verify_vm(plan, name))["boot"]
    needles = checker_needles(boot, PATTERN_MIB)
    source = host_of(plan, name)
    scan = BackgroundStreamScan(plan.host(dest).netns, MIGRATION_INTERFACE, needles)
    params = SourceParameters(plan, name, source)
    try:
        proc = segue("vm", "migrate", name, "--to", dest, "--json", *extra, check=False)
    finally:
        seen = params.finish()
        result = scan.stop()
    job: dict[str, Any] = json.loads(proc.stdout)
    return job, result, seen


def notes(job_id: str) -> str:
    shown = json.loads(segue("migration", "show", job_id, "--json").stdout)
    return "\n".join(t["message"] for t in shown["transitions"])


def test_a_migration_is_encrypted_by_default_and_no_guest_page_crosses_the_link(
        lab: LabPlan, vm: str) -> None:
    boot = fields(guests.verify_vm(lab, vm))["boot"]
    job, scan, seen = migrate_scanned(lab, vm, "host2")
    assert job["phase"] == "completed", job
    assert job["options"]["tls"] is True and job["encrypted"] is True, job
    assert job["summary"]["encrypted"] is True
    assert host_of(lab, vm) == "host2"
    # the stream went by: some 30 MiB of guest pages at least, none of them readable
    assert scan["payload_bytes"] > 16 << 20, scan
    assert scan["found"] == 0, scan
    # the source's QEMU had its credentials named while it sent
    assert any(s.startswith("segue-tls-") for s in seen), seen
    text = notes(job["id"])
    assert "for TLS from host1 alone" in text and "the stream is TLS" in text, text
    verdict = fields(guests.verify_vm(lab, vm))
    assert verdict["boot"] == boot and verdict["result"] == "ok", verdict
    # the destination owns the VM now: no migration TLS is left set on its QEMU
    with guests.agent(lab.host("host2")) as agent:
        params = agent.run(agent.client.set_migration_parameters(vm, {}))
    assert params.get("tls-creds") == "" and params.get("tls-authz") in ("", None), params
    shown = segue("migration", "show", job["id"]).stdout
    assert "stream TLS" in shown, shown


def test_no_tls_sends_the_guest_pages_in_the_clear(lab: LabPlan, vm: str) -> None:
    boot = fields(guests.verify_vm(lab, vm))["boot"]
    dest = "host1" if host_of(lab, vm) == "host2" else "host2"
    job, scan, seen = migrate_scanned(lab, vm, dest, "--no-tls")
    assert job["phase"] == "completed", job
    assert job["options"]["tls"] is False and job["encrypted"] is False, job
    assert host_of(lab, vm) == dest
    # the same capture finds the checker's pattern pages on the link
    assert scan["found"] >= scan["needles"] // 2, scan
    assert seen and all(s in ("", "None") for s in seen), seen
    assert "the stream is plain" in notes(job["id"])
    verdict = fields(guests.verify_vm(lab, vm))
    assert verdict["boot"] == boot and verdict["result"] == "ok", verdict
    # and back with TLS once more: a plain move leaves nothing that stops the next one
    job, scan, _ = migrate_scanned(lab, vm, "host2" if dest == "host1" else "host1")
    assert job["phase"] == "completed" and job["encrypted"] is True, job
    assert scan["found"] == 0, scan


def test_a_destination_admitting_another_host_refuses_the_stream(lab: LabPlan, vm: str
                                                                 ) -> None:
    """The agents driven directly: host2 prepares to admit ``host9`` only, host1 sends with
    its own certificate; QEMU's tls-authz refuses it, the VM runs on as it was."""
    source = host_of(lab, vm)
    dest = "host1" if source == "host2" else "host2"
    boot = fields(guests.verify_vm(lab, vm))["boot"]
    with guests.agent(lab.host(source)) as src, guests.agent(lab.host(dest)) as dst:
        info = src.run(src.client.get_vm(vm))
        answer = dst.run(dst.client.prepare_incoming(info.spec, "authz-test", {}, {},
                                                     tls_peer="host9"))
        assert answer.tls is True
        try:
            view = src.run(src.client.start_migration(
                vm, answer.uri, {}, {}, migration_id="authz-test", destination=dest,
                generation=info.generation, tls=True))
            assert view.tls is True
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status = src.run(src.client.migration_status(vm)).migration.status
                if status.value in ("failed", "completed", "cancelled"):
                    break
                time.sleep(0.2)
            assert status.value == "failed", status
        finally:
            src.run(src.client.cancel_migration(vm, info.generation))
            with contextlib.suppress(SegueError):  # its QEMU exits when the stream fails
                dst.run(dst.client.abort_incoming(vm))
        params = src.run(src.client.set_migration_parameters(vm, {}))
        assert params.get("tls-creds") == "", params  # the cancel removed its TLS
        assert src.run(src.client.get_vm(vm)).state == "running"
        assert vm not in [v.name for v in dst.run(dst.client.list_vms())]
    verdict = fields(guests.verify_vm(lab, vm))
    assert verdict["boot"] == boot and verdict["result"] == "ok", verdict
    # the VM still migrates, encrypted, afterwards
    job, _, _ = migrate_scanned(lab, vm, dest)
    assert job["phase"] == "completed" and job["encrypted"] is True, job
