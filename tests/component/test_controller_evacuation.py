"""Maintenance evacuations through the controller's API against fake agents whose
migrations end when the test says so (``Moves.finish``, from the queue's tests): the moves
run at most ``max_parallel`` at once, the host ends ``in-maintenance``, a VM that cannot
move (a must rule, a failed job) leaves it ``entering-maintenance`` naming it, and a
restarted controller resumes an evacuation without requesting a VM's migration twice;
``exit --return`` brings back the VMs the evacuation moved, not one moved elsewhere since."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_controller_checks import Controller
from test_controller_queue import VMS, Moves, cluster, controller, running, vm_spec

from segue.engine.phases import TERMINAL

POLL_S = 0.02


async def status(c: Controller, host: str = "host1") -> dict[str, Any]:
    resp = await c.http.get(f"/hosts/{host}/maintenance")
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


async def until(what: str, test: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await test():
        assert time.monotonic() < deadline, f"never {what}"
        await asyncio.sleep(POLL_S)


async def enter(c: Controller, max_parallel: int = 2) -> dict[str, Any]:
    c.app.state.evacuations.poll_s = POLL_S
    resp = await c.http.post("/hosts/host1/maintenance/enter",
                             json={"max_parallel": max_parallel})
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


async def active_jobs(c: Controller) -> list[dict[str, Any]]:
    jobs = (await c.http.get("/migrations")).json()
    return [j for j in jobs if j["phase"] not in TERMINAL]


async def hosts_of(c: Controller) -> dict[str, str]:
    return {v["name"]: v["host"] for v in (await c.http.get("/vms")).json()}


def requests_of(c: Controller, vm: str) -> int:
    """How many times a fake agent was asked to start ``vm``'s migration."""
    return sum(call == f"start_migration {vm}" for a in c.agents.values() for call in a.calls)


async def test_three_vms_leave_two_at_a_time_and_the_host_ends_in_maintenance(
        tmp_path: Path) -> None:
    moves = Moves()
    async with controller(tmp_path, cluster(moves), outgoing=4, incoming=4) as c:
        seen: list[int] = []

        async def sample() -> None:
            while True:
                seen.append(len(await active_jobs(c)))
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        try:
            answer = await enter(c)
            assert answer["state"] == "entering-maintenance"
            assert "evacuating: 3 VM(s) to move" in answer["reason"]

            async def copying(n: int) -> bool:
                return len(moves.started) >= n
            await until("two copying", lambda: copying(2))
            await asyncio.sleep(0.2)  # several polls of the evacuation: no third request
            assert len(moves.started) == 2 and len(await active_jobs(c)) == 2
            running = await status(c)
            assert running["evacuation"] == "running" and running["eta_s"] is not None
            phases = {v["vm"]: v["phase"] for v in running["vms"]}
            assert sorted(phases.values()) == ["migrating", "migrating", "planned"]
            assert all(v["job_phase"] and v["progress_pct"] is not None
                       for v in running["vms"] if v["phase"] == "migrating"), running["vms"]
            for vm in list(moves.started):
                moves.finish(vm)
                await until(f"{vm} moved", lambda vm=vm: _phase_is(c, vm, "moved"))
            await until("three copying", lambda: copying(3))
            moves.finish(moves.started[2])

            async def in_maintenance() -> bool:
                return (await status(c))["state"] == "in-maintenance"
            await until("in-maintenance", in_maintenance)
        finally:
            sampler.cancel()
        assert max(seen) == 2  # the evacuation ran two at once, never more
        done = await status(c)
        assert done["evacuation"] == "done" and done["reason"] is None
        assert {v["phase"] for v in done["vms"]} == {"moved"}
        where = await hosts_of(c)
        assert all(where[vm] in ("host2", "host3") for vm in VMS), where
        assert all(requests_of(c, vm) == 1 for vm in VMS)
        kinds = [e["kind"] for e in (await c.http.get("/vms/web1/events")).json()]
        assert "evacuation-requested" in kinds and "evacuation-moved" in kinds


async def _phase_is(c: Controller, vm: str, phase: str) -> bool:
    return any(v["vm"] == vm and v["phase"] == phase for v in (await status(c))["vms"])


async def test_a_must_rule_and_a_failed_job_leave_the_host_entering_naming_them(
        tmp_path: Path) -> None:
    moves = Moves()
    async with controller(tmp_path, cluster(moves), outgoing=4, incoming=4) as c:
        await c.http.post("/hosts/host1/tags", json={"add": ["home"]})
        resp = await c.http.post("/rules", json={"name": "stay", "kind": "vm-host",
                                                 "vms": ["web1"], "host_tag": "home"})
        assert resp.status_code == 201, resp.text
        answer = await enter(c)
        assert "web1: MUST_RULE" in answer["reason"]
        await until("web2 and web3 copying", lambda: _started(moves, {"web2", "web3"}))
        again = await c.http.post("/hosts/host1/maintenance/enter", json={})
        assert again.status_code == 409 and "EVACUATION_RUNNING" in again.text
        moves.finish("web2")
        web3 = next(j for j in await active_jobs(c) if j["vm"] == "web3")
        cancelled = await c.http.post(f"/migrations/{web3['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text

        async def stuck() -> bool:
            return (await status(c))["evacuation"] == "stuck"
        await until("stuck", stuck)
        left = await status(c)
        assert left["state"] == "entering-maintenance"
        assert "web1: MUST_RULE" in left["reason"]
        assert "web3: MIGRATION_CANCELLED" in left["reason"]
        rows = {v["vm"]: v for v in left["vms"]}
        assert rows["web2"]["phase"] == "moved" and rows["web3"]["job_id"] == web3["id"]
        assert rows["web1"]["blocker"] == "MUST_RULE" and rows["web1"]["job_id"] is None
        where = await hosts_of(c)
        assert where["web1"] == "host1" and where["web3"] == "host1"
        assert where["web2"] != "host1"
        assert requests_of(c, "web1") == 0 and requests_of(c, "web3") == 1
        host = (await c.http.get("/hosts/host1")).json()
        assert host["maintenance_state"] == "entering-maintenance"
        kinds = [e["kind"] for e in (await c.http.get("/vms/web1/events")).json()]
        assert "evacuation-blocked" in kinds


async def _started(moves: Moves, vms: set[str]) -> bool:
    return vms <= set(moves.started)


async def test_a_restarted_controller_resumes_without_requesting_a_vm_twice(
        tmp_path: Path) -> None:
    moves = Moves()
    agents = cluster(moves)
    async with controller(tmp_path, agents, outgoing=4, incoming=4) as c:
        await enter(c)
        await until("two copying", lambda: _count_started(moves, 2))
        first = {v["vm"]: v["job_id"] for v in (await status(c))["vms"] if v["job_id"]}
        assert len(first) == 2

        # the evacuation stops watching (as in a controller that dies) while its two
        # jobs run on and end; the third VM was not requested yet
        c.app.state.evacuations.stop_all()
        for vm in first:
            moves.finish(vm)

        async def both_ended() -> bool:
            return not await active_jobs(c)
        await until("both jobs ended", both_ended)
        assert len(moves.started) == 2
    async with controller(tmp_path, agents, outgoing=4, incoming=4) as c:
        c.app.state.evacuations.poll_s = POLL_S
        (third,) = set(VMS) - set(first)
        await until("the third copying", lambda: _started(moves, {third}))
        moves.finish(third)

        async def in_maintenance() -> bool:
            return (await status(c))["state"] == "in-maintenance"
        await until("in-maintenance", in_maintenance)
        rows = {v["vm"]: v for v in (await status(c))["vms"]}
        assert {vm: rows[vm]["job_id"] for vm in first} == first  # awaited, not requested
        assert all(requests_of(c, vm) == 1 for vm in VMS), [a.calls for a in agents]
        assert len((await c.http.get("/migrations")).json()) == 3


async def test_a_move_the_controller_s_stop_rolled_back_is_requested_once_more(
        tmp_path: Path) -> None:
    moves = Moves()
    agents = cluster(moves)
    async with controller(tmp_path, agents, outgoing=4, incoming=4) as c:
        await enter(c, max_parallel=1)
        await until("one copying", lambda: _count_started(moves, 1))
        first = moves.started[0]
    # the clean stop rolled that copy back (CONTROLLER_STOPPED): it runs on host1 again
    async with controller(tmp_path, agents, outgoing=4, incoming=4) as c:
        c.app.state.evacuations.poll_s = POLL_S

        async def in_maintenance() -> bool:  # each copy finished as soon as it starts
            for vm in moves.started[1:]:
                moves.finish(vm)
            return (await status(c))["state"] == "in-maintenance"
        await until("in-maintenance", in_maintenance, timeout=60)  # three moves, one by one
        jobs = [j for j in (await c.http.get("/migrations")).json() if j["vm"] == first]
        assert sorted(j["phase"] for j in jobs) == ["completed", "failed"], jobs
        assert {j["error_code"] for j in jobs} == {None, "CONTROLLER_STOPPED"}
        assert requests_of(c, first) == 2 and moves.started.count(first) == 2
        assert all(requests_of(c, vm) == 1 for vm in VMS if vm != first)
        row = next(v for v in (await status(c))["vms"] if v["vm"] == first)
        assert row["phase"] == "moved" and "CONTROLLER_STOPPED" in row["message"]
        kinds = [e["kind"] for e in (await c.http.get(f"/vms/{first}/events")).json()]
        assert "evacuation-retried" in kinds


async def _count_started(moves: Moves, n: int) -> bool:
    return len(moves.started) >= n


async def test_exit_return_brings_back_the_vms_it_moved_and_names_the_one_gone_elsewhere(
        tmp_path: Path) -> None:
    moves = Moves()
    async with controller(tmp_path, cluster(moves), outgoing=4, incoming=4) as c:
        await enter(c, max_parallel=3)
        await until("three copying", lambda: _count_started(moves, 3))
        for vm in VMS:
            moves.finish(vm)

        async def in_maintenance() -> bool:
            return (await status(c))["state"] == "in-maintenance"
        await until("in-maintenance", in_maintenance)
        # web3 moves on by hand: the return must leave it where it is now
        where = await hosts_of(c)
        elsewhere = "host3" if where["web3"] == "host2" else "host2"
        resp = await c.http.post("/vms/web3/migrations", json={"to": elsewhere})
        assert resp.status_code == 202, resp.text
        await until("web3 copying", lambda: _count_started(moves, 4))
        moves.finish("web3")

        async def web3_moved() -> bool:
            return not await active_jobs(c) and (await hosts_of(c))["web3"] == elsewhere
        await until("web3 moved on", web3_moved)

        resp = await c.http.post("/hosts/host1/maintenance/exit",
                                 json={"return": True, "max_parallel": 2})
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert answer["state"] == "normal"
        assert sorted(v["vm"] for v in answer["vms"]) == list(VMS)
        assert {v["dest"] for v in answer["vms"]} == {"host1"}
        await until("web1 and web2 copying back", lambda: _count_started(moves, 6))
        assert moves.started[4:] and set(moves.started[4:6]) == {"web1", "web2"}
        for vm in ("web1", "web2"):
            moves.finish(vm)

        async def ended() -> bool:
            return (await status(c))["evacuation"] in ("done", "stuck")
        await until("the return ended", ended)
        back = await status(c)
        assert back["kind"] == "return" and back["evacuation"] == "stuck"
        assert back["state"] == "normal"
        rows = {v["vm"]: v for v in back["vms"]}
        assert rows["web1"]["phase"] == rows["web2"]["phase"] == "moved"
        assert rows["web1"]["source"] == where["web1"] and rows["web1"]["dest"] == "host1"
        assert rows["web3"]["blocker"] == "RETURN_SKIPPED"
        assert elsewhere in rows["web3"]["message"]
        now = await hosts_of(c)
        assert now["web1"] == now["web2"] == "host1" and now["web3"] == elsewhere
        assert requests_of(c, "web3") == 2  # the evacuation and the hand move, no return
        kinds = [e["kind"] for e in (await c.http.get("/vms/web1/events")).json()]
        assert "return-requested" in kinds and "return-moved" in kinds


async def test_a_stopped_vm_is_re_homed_without_a_slot_and_returned_stopped(
        tmp_path: Path) -> None:
    moves = Moves()
    agents = cluster(moves)
    agents[0].vms["db1"] = {**running(vm_spec("db1")), "state": "stopped", "pid": None}
    async with controller(tmp_path, agents, outgoing=4, incoming=4) as c:
        answer = await enter(c, max_parallel=1)
        rows = {v["vm"]: v for v in answer["vms"]}
        assert rows["db1"]["running"] is False and rows["db1"]["dest"] in ("host2", "host3")
        await until("one copying", lambda: _count_started(moves, 1))
        # db1 needs no migration slot: it is re-homed while the first copy runs
        await until("db1 re-homed", lambda: _phase_is(c, "db1", "moved"))
        dest = rows["db1"]["dest"]
        assert (await hosts_of(c))["db1"] == dest
        assert "db1" in agents[int(dest[-1]) - 1].vms and "db1" not in agents[0].vms
        assert "adopt db1 host1" in agents[int(dest[-1]) - 1].calls
        assert "release_definition db1" in agents[0].calls
        assert requests_of(c, "db1") == 0 and len(moves.started) == 1

        async def in_maintenance() -> bool:  # each copy finished as soon as it starts
            for vm in moves.started:
                moves.finish(vm)
            return (await status(c))["state"] == "in-maintenance"
        await until("in-maintenance", in_maintenance)
        events = (await c.http.get("/vms/db1/events")).json()
        assert any(e["kind"] == "evacuation-moved" and e["detail"].get("rehomed")
                   for e in events), events

        resp = await c.http.post("/hosts/host1/maintenance/exit", json={"return": True})
        assert "db1" in [v["vm"] for v in resp.json()["vms"]], resp.text
        await until("db1 back", lambda: _phase_is(c, "db1", "moved"))
        assert (await hosts_of(c))["db1"] == "host1" and "db1" in agents[0].vms


async def test_exit_return_without_an_evacuation_moves_nothing(tmp_path: Path) -> None:
    moves = Moves()
    async with controller(tmp_path, cluster(moves), outgoing=4, incoming=4) as c:
        host2 = await c.http.post("/hosts/host2/maintenance/enter", json={})
        assert host2.json()["state"] == "in-maintenance", host2.text  # empty: at once
        resp = await c.http.post("/hosts/host2/maintenance/exit", json={"return": True})
        assert resp.status_code == 200, resp.text
        assert resp.json()["state"] == "normal" and resp.json()["vms"] == []
        assert moves.started == []
        again = await c.http.post("/hosts/host2/maintenance/exit", json={"return": True})
        assert again.status_code == 409, again.text
        assert "MAINTENANCE_TRANSITION_INVALID" in again.text
