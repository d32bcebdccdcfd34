"""The lab's helpers (``segue.lab.guests``) over the typed controller client, against the
in-process controller and agents of ``test_controller_inventory``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_controller_inventory import ClusterFactory, LoopBridge, cluster

from segue.clients.base import Blocking
from segue.clients.controller import ControllerClient
from segue.image.builder import GuestImage
from segue.lab import guests
from segue.lab.topology import LabPlan, plan_lab

if TYPE_CHECKING:
    from conftest import Lab

__all__ = ["cluster"]  # the fixture, shared


async def test_guests_find_and_describe_vms(cluster: ClusterFactory, lab: Lab,
                                            monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    async with cluster() as c:
        await c.beat("host1")
        bridge = LoopBridge(c.controller, asyncio.get_running_loop())
        monkeypatch.setattr(guests, "controller", lambda plan, timeout=300.0: Blocking(
            ControllerClient("http://controller", transport=bridge)))
        plan = plan_lab("ct", 2, root=tmp_path / "lab")
        image = GuestImage(kernel=lab.kernel, initrd=lab.initrd, key="k", kernel_version="v")

        def use(plan: LabPlan) -> None:
            spec = guests.guest_spec(plan, "g1", image, guests.GuestOptions(memory_mib=64))
            spec = guests.respec(spec, nics=[])  # the test agents have no port groups
            assert guests.guest_ip(spec).startswith("10.")
            with guests.controller(plan) as client:
                created = client.run(client.client.create_vm("host1", spec, start=True))
            assert created.live is not None and created.live.state == "running"
            host, vm = guests.find_vm(plan, "g1")
            assert host.name == "host1" and vm.pid == created.live.pid
            assert guests.guest_ip(vm) == guests.guest_ip(spec)
            assert [v.name for v in guests.all_vms(plan) if guests.is_lab_guest(v)] == ["g1"]
            second = guests.guest_spec(plan, "g2", image, guests.GuestOptions())
            assert guests.guest_ip(second) != guests.guest_ip(spec)  # a free address
            own = guests.own_image(second, disk="disks/d.qcow2")
            assert own.kernel is None and own.disks[0].format == "qcow2" and not own.cmdline

        await asyncio.to_thread(use, plan)
