"""The agent side of a live migration with real QEMU (TCG) in a 2-host lab, driven through
the agents alone (no controller decisions): prepare_incoming on host2, migrate on host1,
claim on host2, release on host1; and a cancelled migration that leaves the VM where it was.

Measurements (total time, QEMU's downtime, switchover from QMP event timestamps, the
guest-visible gap from the client namespace, the announce delay QEMU accepted) are printed
(run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import lab_cli
import pytest

from segue.api.agent import IncomingAnswer, MigrationView, Parameters
from segue.api.vm import VMInfo
from segue.clients.agent import AgentClient
from segue.clients.base import Blocking
from segue.domain.errors import Unavailable
from segue.image.builder import GuestImage, build_image
from segue.lab import guests
from segue.lab.lab import lab_down, lab_up, load_state
from segue.lab.topology import LabPlan
from segue.qemu.process import pid_alive

pytestmark = pytest.mark.integration
LAB = "agmig"


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return build_image()


@pytest.fixture(scope="module")
def lab(image: GuestImage) -> Iterator[LabPlan]:
    lab_down(LAB)  # a crashed earlier run
    lab_up(LAB, 2)
    try:
        yield load_state(LAB).plan
    finally:
        lab_down(LAB)


verify_fields = lab_cli.verify_fields
Agent = Blocking[AgentClient]
T = TypeVar("T")


def wait_verify(plan: LabPlan, ip: str, timeout: float = 180.0) -> dict[str, str]:
    """The guest checker's VERIFY fields, once it answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return verify_fields(guests.verify_ip(plan, ip))
        except Unavailable:
            assert time.monotonic() < deadline, f"{ip} did not answer VERIFY"


def poll(what: Callable[[], T], until: Callable[[T], bool],
         timeout: float, every: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while not until(answer := what()):
        assert time.monotonic() < deadline, f"not reached in {timeout} s: {answer}"
        time.sleep(every)
    return answer


def start_guest(plan: LabPlan, image: GuestImage, name: str) -> tuple[VMInfo, str]:
    """A dirtying guest on host1, answering; its agent info and IP."""
    spec = guests.guest_spec(plan, name, image, guests.GuestOptions(dirty_mbps=4))
    with guests.agent(plan.host("host1")) as src:
        info = src.run(src.client.define_vm(spec, start=True))
    return info, guests.guest_ip(info)


def qemus_of(uuid: str, host_dir: Path) -> list[int]:
    """Pids of live QEMUs of the VM started by the host whose state dir is ``host_dir``."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        if b"qemu-system" in cmd and uuid.encode() in cmd and str(host_dir).encode() in cmd \
                and pid_alive(int(proc.name)):
            out.append(int(proc.name))
    return out


def event_time(client: Agent, name: str, event: str) -> float:
    return float(next(e.timestamp for e in reversed(client.run(client.client.events(name)))
                      if e.event == event))


def status(agent: Agent, name: str) -> Callable[[], MigrationView]:
    """A poll of the VM's migration as ``agent``'s host sees it."""
    return lambda: agent.run(agent.client.migration_status(name))


def migrate(src: Agent, dst: Agent, info: VMInfo,
            parameters: Parameters) -> tuple[IncomingAnswer, MigrationView]:
    """prepare_incoming on dst, start on src, wait until QEMU says completed and dst runs.

    Returns (the destination's prepare answer, the source's final migration status)."""
    name = info.name
    incoming = dst.run(dst.client.prepare_incoming(info.spec, f"it-{name}", {}, parameters))
    src.run(src.client.start_migration(name, incoming.uri, {}, parameters,
                                       migration_id=f"it-{name}", destination="host2"))
    done = poll(status(src, name),
                lambda s: s.migration.status in ("completed", "failed", "cancelled"),
                timeout=180)
    assert done.migration.status == "completed", done
    # QEMU reports completed while still in finish-migrate (state paused) for a moment
    done = poll(status(src, name), lambda s: s.state == "postmigrate", timeout=10)
    poll(status(dst, name), lambda s: s.state == "running", timeout=30)
    return incoming, done


def test_migration_through_the_agents(lab: LabPlan, image: GuestImage) -> None:
    info, ip = start_guest(lab, image, "mig1")
    before = wait_verify(lab, ip)
    assert before["result"] == "ok", before
    host1, host2 = lab.host("host1"), lab.host("host2")
    with guests.agent(host1) as src, guests.agent(host2) as dst:
        probe = guests.BackgroundProbe(lab, ip)
        t0 = time.monotonic()
        incoming, done = migrate(src, dst, info, {"max-bandwidth": 1 << 30})
        assert incoming.uri.startswith(f"tcp:{host2.mig_ip}:"), incoming
        assert done.state == "postmigrate" and done.role == "source"
        claimed = dst.run(dst.client.claim("mig1"))
        stopped_at = event_time(src, "mig1", "STOP")  # the source's events go with release
        src.run(src.client.release("mig1"))
        total_s = time.monotonic() - t0
        seen = probe.stop()
        resumed_at = event_time(dst, "mig1", "RESUME")
        switchover_ms = (resumed_at - stopped_at) * 1000
        arrived = [e for e in dst.run(dst.client.events("mig1")) if e.event == "MIGRATION"
                   and e.data.get("status") == "completed"]
        cont_ms = (resumed_at - arrived[-1].timestamp) * 1000  # the agent's cont
        assert claimed.role == "owner" and claimed.state == "running"
        assert "mig1" not in [v.name for v in src.run(src.client.list_vms())]
        assert [v.name for v in dst.run(dst.client.list_vms())] == ["mig1"]
    after = wait_verify(lab, ip)
    assert after["boot"] == before["boot"] and after["result"] == "ok", (before, after)
    shared = json.loads((lab.datastore_dir / "mig1" / "vm.json").read_text())
    assert shared["host"] == "host2"
    assert info.pid is not None and not pid_alive(info.pid)
    assert qemus_of(info.uuid, host1.state_dir) == []
    probed = guests.run_prober(lab, ["--ip", ip, "--seconds", "2", "--json"], timeout=60)
    result = json.loads(probed)
    assert result["received"] > 0.9 * result["sent"] > 100, result
    assert result["boot_ids"] == [before["boot"]], result
    print(f"\nMIGRATION mig1 host1->host2: total {total_s:.2f} s (prepare to release), "
          f"QEMU total-time {done.migration.total_time} ms, "
          f"QEMU downtime {done.migration.downtime} ms, "
          f"switchover STOP->RESUME {switchover_ms:.1f} ms "
          f"(of which destination completed->RESUME {cont_ms:.1f} ms), "
          f"guest-visible longest gap {seen['longest_gap_ms']:.1f} ms "
          f"({seen['lost']} of {seen['sent']} probes lost), "
          f"announce accepted: {incoming.announce}")
    assert incoming.announce["announce-initial"] == 1


def test_cancelled_migration_keeps_the_vm_on_its_source(lab: LabPlan, image: GuestImage
                                                        ) -> None:
    info, ip = start_guest(lab, image, "mig2")
    before = wait_verify(lab, ip)
    host1, host2 = lab.host("host1"), lab.host("host2")
    with guests.agent(host1) as src, guests.agent(host2) as dst:
        incoming = dst.run(dst.client.prepare_incoming(info.spec, "it-cancel", {},
                                                       {"max-bandwidth": 1 << 20}))
        assert qemus_of(info.uuid, host2.state_dir) == [incoming.pid]
        src.run(src.client.start_migration("mig2", incoming.uri, {},
                                           {"max-bandwidth": 1 << 20},
                                           migration_id="it-cancel", destination="host2"))
        active = poll(status(src, "mig2"), lambda s: s.migration.status == "active", timeout=30)
        assert active.role == "source"
        time.sleep(1.0)
        cancelled = src.run(src.client.cancel_migration("mig2"))
        assert cancelled.migration.status == "cancelled", cancelled
        assert cancelled.state == "running" and cancelled.role == "owner"
        # QEMU's incoming side fails when the stream breaks off, and exits
        ended = poll(status(dst, "mig2"), lambda s: s.state == "stopped", timeout=10)
        assert ended.role == "incoming"
        dst.run(dst.client.abort_incoming("mig2"))
        assert "mig2" not in [v.name for v in dst.run(dst.client.list_vms())]
        assert src.run(src.client.get_vm("mig2")).state == "running"
    after = wait_verify(lab, ip)
    assert after["boot"] == before["boot"] and after["result"] == "ok", (before, after)
    assert qemus_of(info.uuid, host2.state_dir) == []
    assert info.pid is not None and pid_alive(info.pid)
    shared = json.loads((lab.datastore_dir / "mig2" / "vm.json").read_text())
    assert shared["host"] == "host1"
    ram = active.migration.ram
    print(f"\nCANCEL mig2: transferred {ram.transferred if ram else None} "
          f"bytes before cancel; source {cancelled.state}, boot id unchanged")
