"""Pre-migration checks on a real mixed lab: host2 offers fewer CPU features (an older host),
host3 lacks the VM network's port group, host4 is healthy; the guest runs on host1.

Refused migrations must leave nothing started anywhere; the healthy host takes the VM.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lab_cli
import pytest

from segue.image.builder import build_image
from segue.lab import guests, netns
from segue.lab.lab import lab_down, lab_up, load_state
from segue.lab.topology import LabPlan

pytestmark = pytest.mark.integration
LAB = "ctest"
OLD_CPU = ["avx2", "aes"]


def segue(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return lab_cli.run(LAB, *args, check=check)


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    lab_down(LAB)
    build_image()
    lab_up(LAB, 4, host_overrides={"host2": {"cpu_exclude_features": OLD_CPU},
                                   "host3": {"port_groups": {}}})
    try:
        yield load_state(LAB).plan
    finally:
        lab_down(LAB)
    assert not netns.list_namespaces(f"{LAB}-")


@pytest.fixture(scope="module")
def vm(lab: LabPlan) -> str:
    """A guest using features the older host lacks (not on the cluster baseline)."""
    segue("lab", "vm", "create", "chk1", "--host", "host1", "--cpu", "qemu64,+aes,+avx2",
          "--name", LAB)
    guests.wait_answering(lab, "chk1", timeout=180)
    return "chk1"


def check(vm: str, dest: str) -> tuple[int, dict[str, dict[str, Any]]]:
    proc = segue("vm", "migrate", vm, "--to", dest, "--check", "--json", check=False)
    data = json.loads(proc.stdout)
    results = data["results"] if "results" in data else data["error"]["details"]["results"]
    return proc.returncode, {r["check"]: r for r in results}


def qemus_of(vm: str) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and f"guest={vm},".encode() in cmd:
                out.append(int(proc.name))
    return out


def test_check_lists_the_right_failure_for_each_host(lab: LabPlan, vm: str) -> None:
    rc, older = check(vm, "host2")
    assert rc == 1
    assert older["cpu"]["code"] == "CPU_FEATURE_MISSING"
    assert sorted(older["cpu"]["facts"]["missing"]) == sorted(OLD_CPU)
    assert older["cpu"]["hint"]
    assert all(r["severity"] != "error" for name, r in older.items() if name != "cpu")
    rc, no_net = check(vm, "host3")
    assert rc == 1 and no_net["port_groups"]["code"] == "PORTGROUP_MISSING"
    assert all(r["severity"] != "error" for name, r in no_net.items() if name != "port_groups")
    rc, healthy = check(vm, "host4")
    assert rc == 0 and all(r["severity"] != "error" for r in healthy.values())
    assert healthy["network"]["code"] == "NETWORK_OK"  # the path was really tested


def test_where_shows_the_matrix(lab: LabPlan, vm: str) -> None:
    data = json.loads(segue("vm", "where", vm, "--json").stdout)
    hosts = {h["host"]: h for h in data["hosts"]}
    assert set(hosts) == {"host2", "host3", "host4"}
    assert hosts["host2"]["checks"]["cpu"] == "error" and not hosts["host2"]["ok"]
    assert hosts["host3"]["checks"]["port_groups"] == "error" and not hosts["host3"]["ok"]
    assert hosts["host4"]["ok"]
    table = segue("vm", "where", vm).stdout
    assert "CPU_FEATURE_MISSING" in table and "PORTGROUP_MISSING" in table


def test_older_host_really_runs_guests_without_its_missing_features(lab: LabPlan) -> None:
    facts = json.loads(segue("lab", "facts", "host2", "--json", "--name", LAB).stdout)
    assert not set(OLD_CPU) & set(facts["cpu"]["features"])
    with guests.agent(lab.host("host2")) as agent:
        refused = agent.run(agent.client._http.post("/vms", json={
            "name": "old1", "datastore": "shared", "memory_mib": 128,
            "cpu_model": "qemu64,+aes", "kernel": str(build_image().kernel)}))
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "CPU_FEATURE_MISSING"
    assert not qemus_of("old1")


def test_refused_migrations_start_nothing_and_the_healthy_host_takes_the_vm(
        lab: LabPlan, vm: str) -> None:
    before = json.loads(segue("migration", "list", "--json").stdout)
    for dest, code in (("host2", "CPU_FEATURE_MISSING"), ("host3", "PORTGROUP_MISSING")):
        proc = segue("vm", "migrate", vm, "--to", dest, check=False)
        assert proc.returncode == 1 and "MIGRATION_CHECKS_FAILED" in proc.stderr, proc.stderr
        assert code in proc.stdout + proc.stderr
        assert len(qemus_of(vm)) == 1, "a refused migration started a QEMU"
        with guests.agent(lab.host(dest)) as agent:
            assert vm not in [v.name for v in agent.run(agent.client.list_vms())]
    assert json.loads(segue("migration", "list", "--json").stdout) == before
    boot = guests.verify_vm(lab, vm).split()[1]
    job = json.loads(segue("vm", "migrate", vm, "--to", "host4", "--json").stdout)
    assert job["phase"] == "completed", job
    assert guests.find_vm(lab, vm)[0].name == "host4"
    verdict = guests.verify_vm(lab, vm)
    assert verdict.split()[1] == boot and "result=ok" in verdict


def test_baseline_vm_may_go_to_the_older_host(lab: LabPlan) -> None:
    """A VM on the cluster baseline (the default) runs on every host, the older one too."""
    baseline = json.loads(segue("cluster", "baseline", "--json").stdout)
    assert not set(OLD_CPU) & set(baseline["features"])
    segue("lab", "vm", "create", "base1", "--host", "host1", "--memory", "128", "--name", LAB)
    rc, results = check("base1", "host2")
    assert rc == 0, results
    assert results["cpu"]["code"] == "CPU_OK"
