"""Re-homing a stopped VM between two agents sharing a datastore (fake QEMU,
``segue.agent.rehome``): the new host adopts the definition, the old one can no longer start
it and forgets its copy; a running VM, a definition that names a third host and a release
before the adoption are refused and change nothing; an old host restarted before it could
release its copy drops it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from test_agent_api import tree
from test_agent_migration import agent_on, refused, running_vm, spec_of, two_agents

from segue.agent.vmstore import VM_FILE
from segue.domain.errors import Conflict, InvalidRequest, NotFound
from segue.domain.vm import VMState

if TYPE_CHECKING:
    from conftest import Lab

    from segue.agent.facts import QemuCapabilities


def definitions(lab: Lab) -> dict[str, bytes | None]:
    """The datastore's files but the leases (web1's renews its own while it runs)."""
    return {path: data for path, data in tree(lab.datastore).items() if "/.segue/" not in path}


def named_host(lab: Lab, name: str = "web1") -> str:
    entry: dict[str, object] = json.loads((lab.datastore / name / VM_FILE).read_text())
    return str(entry["host"])


async def test_a_stopped_vm_moves_its_definition_and_only_the_new_host_starts_it(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with two_agents(lab, caps) as (src, dst):
        defined = await src.define_vm(spec_of(lab))
        info = await dst.adopt("web1", "shared", "host1")
        assert info.state == VMState.STOPPED and info.uuid == defined.uuid
        assert named_host(lab) == "host2"
        again = await dst.adopt("web1", "shared", "host1")  # a repeated call: same answer
        assert again.uuid == defined.uuid
        await refused(src.start_vm("web1"), Conflict, "VM_REHOMED")
        await src.release_definition("web1")
        assert [v.name for v in await src.list_vms()] == []
        await refused(src.get_vm("web1"), NotFound, "VM_NOT_FOUND")
        started = await dst.start_vm("web1")
        assert started.state == VMState.RUNNING
        await dst.stop_vm("web1", force=True)


async def test_refusals_change_nothing(lab: Lab, caps: QemuCapabilities) -> None:
    async with two_agents(lab, caps) as (src, dst):
        await running_vm(src, lab)
        await src.define_vm(spec_of(lab, "web2"))
        before = definitions(lab)
        await refused(dst.adopt("web1", "shared", "host1"), Conflict, "VM_LOCKED")
        await refused(dst.adopt("web2", "shared", "host3"), Conflict,
                      "VM_DEFINITION_ELSEWHERE")
        await refused(dst.adopt("web9", "shared", "host1"), NotFound,
                      "VM_DEFINITION_NOT_FOUND")
        await refused(dst.adopt("web2", "nope", "host1"), NotFound, "VM_DEFINITION_NOT_FOUND")
        await refused(src.adopt("web2", "shared", "host1"), InvalidRequest,
                      "REHOME_SAME_HOST")
        await refused(src.release_definition("web2"), Conflict, "VM_NOT_HANDED_OVER")
        await refused(src.release_definition("web1"), Conflict, "VM_NOT_STOPPED")
        assert definitions(lab) == before
        assert [v.name for v in await dst.list_vms()] == []
        assert sorted(v.name for v in await src.list_vms()) == ["web1", "web2"]
        await src.stop_vm("web1", force=True)


async def test_an_old_host_restarted_before_its_release_drops_its_copy(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_on(lab, caps, "host1") as src:
        await src.define_vm(spec_of(lab))
    async with agent_on(lab, caps, "host2") as dst:
        await dst.adopt("web1", "shared", "host1")
    async with agent_on(lab, caps, "host1") as src:  # restarted: the copy is dropped
        assert [v.name for v in await src.list_vms()] == []
    assert named_host(lab) == "host2"
