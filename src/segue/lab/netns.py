"""The lab's fabric made real: network namespaces, bridges, veths, and processes inside them.

Links and addresses are made through netlink (pyroute2), always inside lab namespaces: a veth
is created in one lab namespace with its peer placed directly into another, so no link ever
exists in the root namespace. Every operation is idempotent: creating a fabric that partly
exists completes it, destroying a half-made one removes what is there.

Errors: ``NotFound`` (``NETNS_NOT_FOUND``) when a command is run in a namespace that does not
exist; ``Unavailable`` (``LAB_NETLINK_FAILED``) when the kernel refuses a fabric change.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pyroute2 import NetlinkError, NetNS
from pyroute2 import netns as pyr_netns

from segue.domain.errors import NotFound, Unavailable
from segue.lab.topology import LabPlan, VethEnd, VethPair
from segue.procs import pid_alive

NETNS_DIR = Path("/run/netns")


def list_namespaces(prefix: str = "") -> list[str]:
    """Names of the network namespaces under /run/netns that start with ``prefix``, sorted."""
    return sorted(ns for ns in pyr_netns.listnetns() if ns.startswith(prefix))


def namespace_exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def ensure_namespace(ns: str) -> None:
    """Create the named namespace unless it exists."""
    if not namespace_exists(ns):
        pyr_netns.create(ns)


def remove_namespace(ns: str) -> bool:
    """Remove the named namespace; False if it did not exist. Kill its processes first, or
    the namespace lives on (unnamed) for as long as they do."""
    if not namespace_exists(ns):
        return False
    try:
        pyr_netns.remove(ns)
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def _netlink(namespaces: Sequence[str]) -> Iterator[dict[str, Any]]:
    """One open netlink handle per (existing) namespace, closed on exit."""
    with ExitStack() as stack:
        yield {ns: stack.enter_context(NetNS(ns, flags=0)) for ns in namespaces}


def _index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _ensure_bridge(ipr: Any, ifname: str) -> int:
    index = _index(ipr, ifname)
    if index is None:
        ipr.link("add", ifname=ifname, kind="bridge")
        index = _index(ipr, ifname)
    assert index is not None  # the kernel just made it
    ipr.link("set", index=index, state="up")
    return index


def _ensure_veth(handles: dict[str, Any], pair: VethPair) -> None:
    """Create the pair unless both ends exist; a lone end (half-made pair) is replaced."""
    near, far = handles[pair.switch.netns], handles[pair.far.netns]
    near_index, far_index = _index(near, pair.switch.ifname), _index(far, pair.far.ifname)
    if near_index is not None and far_index is not None:
        return
    if near_index is not None:
        near.link("del", index=near_index)
    if far_index is not None:
        far.link("del", index=far_index)
    near.link(
        "add",
        ifname=pair.switch.ifname,
        kind="veth",
        peer={"ifname": pair.far.ifname, "net_ns_fd": pair.far.netns},
    )


def _configure_end(ipr: Any, end: VethEnd) -> None:
    """Join the end to its bridge, give it its address, bring it up (each step idempotent)."""
    index = _index(ipr, end.ifname)
    if index is None:
        raise Unavailable("LAB_NETLINK_FAILED", f"{end.ifname} missing in {end.netns}")
    if end.master is not None:
        master = _index(ipr, end.master)
        ipr.link("set", index=index, master=master)
    if end.address is not None:
        address, prefixlen = end.address.split("/")
        try:
            ipr.addr("add", index=index, address=address, prefixlen=int(prefixlen))
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise
    ipr.link("set", index=index, state="up")


def create_fabric(plan: LabPlan) -> None:
    """Create the plan's namespaces, bridges and veths, set addresses, bring every link up
    (including ``lo``). Idempotent. Raises Unavailable (``LAB_NETLINK_FAILED``) on failure."""
    for ns in plan.namespaces:
        ensure_namespace(ns)
    try:
        with _netlink(plan.namespaces) as handles:
            for ns in plan.namespaces:
                handles[ns].link("set", index=_index(handles[ns], "lo"), state="up")
            for bridge in plan.bridges:
                _ensure_bridge(handles[bridge.netns], bridge.ifname)
            for pair in plan.veths:
                _ensure_veth(handles, pair)
                _configure_end(handles[pair.switch.netns], pair.switch)
                _configure_end(handles[pair.far.netns], pair.far)
    except NetlinkError as err:
        raise Unavailable(
            "LAB_NETLINK_FAILED",
            f"building the fabric of lab {plan.name!r} failed: {err}",
            "run `segue lab down` and try again",
        ) from err


def destroy_namespaces(
    namespaces: Sequence[str], timeout: float = 5.0
) -> tuple[list[str], list[int]]:
    """Kill every process in the named namespaces, then remove those namespaces (their veths
    and bridges go with them); absent ones are skipped. Returns (namespaces, pids) removed."""
    pids = sorted({pid for ns in namespaces for pid in pids_in_netns(ns)})
    kill_pids(pids, timeout=timeout)
    removed = [ns for ns in namespaces if remove_namespace(ns)]
    return removed, pids


def destroy_fabric(plan: LabPlan, timeout: float = 5.0) -> tuple[list[str], list[int]]:
    """``destroy_namespaces`` over the plan's namespaces; works on a half-made fabric."""
    return destroy_namespaces(plan.namespaces, timeout=timeout)


def pids_in_netns(ns: str) -> list[int]:
    """PIDs of the processes whose network namespace is ``ns`` (by inode and device of
    /proc/<pid>/ns/net against /run/netns/<ns>); empty if the namespace does not exist."""
    try:
        target = os.stat(NETNS_DIR / ns)
    except FileNotFoundError:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            found.append(int(entry.name))
    return sorted(found)


def _signal_all(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def kill_pids(pids: Sequence[int], timeout: float = 5.0) -> None:
    """SIGTERM the processes, wait up to ``timeout`` s, SIGKILL the survivors and wait again."""
    _signal_all(pids, signal.SIGTERM)
    survivors = _wait_gone(pids, timeout)
    if survivors:
        _signal_all(survivors, signal.SIGKILL)
        _wait_gone(survivors, timeout)


def _netns_argv(ns: str, argv: Sequence[str]) -> list[str]:
    if not namespace_exists(ns):
        raise NotFound("NETNS_NOT_FOUND", f"no network namespace {ns!r}", "run `segue lab up`")
    # `ip netns exec` also remounts /sys for the namespace (the agent reads link speeds there)
    return ["ip", "netns", "exec", ns, *argv]


def spawn_in_netns(
    ns: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside namespace ``ns`` in its own session (it outlives its parent),
    stdout and stderr appended to ``log_path``. Popen.pid is the command's own pid (``ip``
    execs it). Raises NotFound (``NETNS_NOT_FOUND``) if ``ns`` does not exist."""
    full = _netns_argv(ns, argv)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )


def run_in_netns(
    ns: str, argv: Sequence[str], timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside ``ns`` to completion, capturing text output (not checked).
    Raises NotFound (``NETNS_NOT_FOUND``) or subprocess.TimeoutExpired."""
    return subprocess.run(
        _netns_argv(ns, argv), capture_output=True, text=True, timeout=timeout, check=False,
        env=env,
    )
