"""An older host for real: a 2-host lab whose host2 offers no avx2 and no aes, real QEMU (TCG).

host2's agent must report the smaller feature set, start every QEMU without those features
(QEMU's own expansion of the running VM's CPU says so), refuse a VM that asks for one, and the
migration network path between the hosts must be tested for real, failing when host2's
migration interface is down.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from segue.api.vm import VMInfo
from segue.domain.errors import InsufficientResources
from segue.image.builder import GuestImage, build_image
from segue.lab import guests, netns
from segue.lab.lab import lab_down, lab_up, load_state
from segue.lab.topology import LabPlan

pytestmark = pytest.mark.integration
LAB = "cputest"
OLDER = ["avx2", "aes"]


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return build_image()


@pytest.fixture(scope="module")
def lab(image: GuestImage) -> Iterator[LabPlan]:
    lab_down(LAB)
    lab_up(LAB, 2, host_overrides={"host2": {"cpu_exclude_features": OLDER}})
    try:
        yield load_state(LAB).plan
    finally:
        lab_down(LAB)
    assert not netns.list_namespaces(f"{LAB}-")


def start_guest(plan: LabPlan, image: GuestImage, name: str, host: str,
                cpu_model: str) -> VMInfo:
    """Define and start a lab guest directly on ``host``'s agent."""
    spec = guests.guest_spec(plan, name, image, guests.GuestOptions(memory_mib=128))
    with guests.agent(plan.host(host)) as agent:
        return agent.run(agent.client.define_vm(guests.respec(spec, cpu_model=cpu_model),
                                                start=True))


def qemu_cpu_option(pid: int) -> str:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return args[args.index("-cpu") + 1]


def test_facts_of_the_older_host_omit_the_features(lab: LabPlan) -> None:
    with guests.agent(lab.host("host1")) as one, guests.agent(lab.host("host2")) as two:
        full = one.run(one.client.facts()).cpu.features
        older = two.run(two.client.facts()).cpu.features
    assert set(OLDER) <= set(full)  # TCG's max model has them: the exclusion is what removes them
    assert not set(OLDER) & set(older)
    assert set(older) == set(full) - set(OLDER)


def test_guest_on_the_older_host_really_lacks_them(lab: LabPlan, image: GuestImage) -> None:
    old = start_guest(lab, image, "cpuold", "host2", "max")
    new = start_guest(lab, image, "cpunew", "host1", "max")
    assert old.state == new.state == "running"
    assert old.pid is not None and new.pid is not None
    assert qemu_cpu_option(old.pid) == "max,-aes,-avx2,enforce"
    assert qemu_cpu_option(new.pid) == "max,enforce"
    with guests.agent(lab.host("host2")) as two, guests.agent(lab.host("host1")) as one:
        old_cpu = two.run(two.client.vm_cpu("cpuold"))
        new_cpu = one.run(one.client.vm_cpu("cpunew"))
        host2_features = two.run(two.client.facts()).cpu.features
    assert old_cpu.model == "max,-aes,-avx2,enforce"
    assert not set(OLDER) & set(old_cpu.features)
    assert set(OLDER) <= set(new_cpu.features)
    assert set(old_cpu.features) <= set(host2_features)


def test_older_host_refuses_a_model_asking_for_them(lab: LabPlan, image: GuestImage) -> None:
    spec = guests.guest_spec(lab, "needsaes", image, guests.GuestOptions(memory_mib=128))
    with guests.agent(lab.host("host2")) as two:
        with pytest.raises(InsufficientResources) as err:
            two.run(two.client.define_vm(guests.respec(spec, cpu_model="qemu64,+aes"),
                                         start=True))
        assert err.value.code == "CPU_FEATURE_MISSING"
        assert err.value.details["missing"] == ["aes"]
        assert "needsaes" not in [vm.name for vm in two.run(two.client.list_vms())]


def set_link(plan: LabPlan, host: str, ifname: str, state: str) -> None:
    subprocess.run(["ip", "netns", "exec", plan.host(host).netns, "ip", "link", "set", ifname,
                    state], check=True, capture_output=True, timeout=10)


def test_migration_path_is_tested_not_assumed(lab: LabPlan) -> None:
    with guests.agent(lab.host("host1")) as one, guests.agent(lab.host("host2")) as two:
        listener = two.run(two.client.open_probe_listener())
        assert listener.address == lab.host("host2").mig_ip
        ok = one.run(one.client.probe_migration_path(listener.address, listener.port))
        assert ok.ok is True and ok.error is None and ok.rtt_ms is not None
        assert ok.source_address == lab.host("host1").mig_ip
        # opened while host2's migration NIC is up
        listener = two.run(two.client.open_probe_listener())
        set_link(lab, "host2", "mig0", "down")
        try:
            down = one.run(one.client.probe_migration_path(listener.address, listener.port))
        finally:
            set_link(lab, "host2", "mig0", "up")
    assert down.ok is False and down.rtt_ms is None and down.error
