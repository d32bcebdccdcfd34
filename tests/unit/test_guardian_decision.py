"""The lease guardian's pure parts (``segue.agent.guardian``): the decision from the lease
record, the time and the claim it guards; the timing; what the agent reads of it
(``segue.agent.guardians``). The process itself runs in ``tests/component``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from segue.agent.guardian import (
    Action,
    LeaseSeen,
    decide,
    fence_after,
    guard_margin,
    parse_lease,
    poll_interval,
)
from segue.agent.guardians import clear_record, fence_record, needs_guardian
from segue.agent.leases import Lease
from segue.agent.roles import VMRole

NOW = 1_000_000.0
MARGIN = 3.0
K, X, L = Action.KEEP, Action.KILL, Action.LEAVE


def seen(host: str = "host1", generation: int = 4, left: float = 10.0, released: bool = False,
         previous: str | None = None) -> LeaseSeen:
    return LeaseSeen(host, generation, NOW + left, released, previous)


# (what, the lease as last read, action, words of the reason); host1 guards generation 4
CASES = [
    ("renewed: plenty left", seen(left=14.9), K, ""),
    ("one renewal missed", seen(left=9.0), K, ""),
    ("the agent's own fence point passed, still outside the margin", seen(left=3.1), K, ""),
    ("within the margin", seen(left=3.0), X, "expires in 3.0 s"),
    ("about to expire", seen(left=0.5), X, "not renewed"),
    ("expired already", seen(left=-20.0), X, "expired 20.0 s ago"),
    ("released by this host at this generation", seen(released=True), X, "released"),
    ("claimed by another host (after an expiry)", seen("host9", 5), X, "host9's at generation 5"),
    ("another host's, even far from expiry", seen("host9", 5, left=600.0), X, "host9"),
    ("another host's at the same generation (a foreign write)", seen("host9", 4), X, "host9"),
    ("this host's at an older generation (storage rolled back)", seen(generation=3), X,
     "generation 3"),
    ("this host's, released at a newer generation", seen(generation=5, released=True), X,
     "released"),
    ("taken over by the migration's destination", seen("host2", 5, previous="host1"), L,
     "taken over by host2"),
    ("taken over, then given back unused", seen("host2", 5, released=True, previous="host1"),
     L, "taken over"),
    ("taken over from another host's claim", seen("host2", 5, previous="host3"), X, "host2"),
    ("taken over two claims later", seen("host3", 6, previous="host1"), X, "host3"),
    ("this host claimed it again (a rollback's re-claim)", seen(generation=5), L,
     "generation 5"),
]


@pytest.mark.parametrize(("what", "lease", "action", "words"), CASES,
                         ids=[c[0] for c in CASES])
def test_the_guardian_decides_from_the_lease(what: str, lease: LeaseSeen, action: Action,
                                             words: str) -> None:
    decision = decide(lease, NOW, "host1", 4, MARGIN)
    assert decision.action is action, (what, decision)
    assert words in decision.reason, (what, decision.reason)


@pytest.mark.parametrize(("duration", "renew", "margin", "poll"), [
    (15.0, 3.0, 3.0, 1.0),  # the defaults: acts 12-13 s after the last renewal
    (3.0, 0.2, 0.3, 0.1),  # the component tests' leases
    (6.0, 1.0, 1.0, 1 / 3),
    (600.0, 120.0, 120.0, 1.0),
    (3.0, 1.0, 1.0, 1 / 3),  # renewals at a third of the lease (the most the config allows)
])
def test_the_guardian_acts_after_the_agent_and_before_the_expiry(
        duration: float, renew: float, margin: float, poll: float) -> None:
    assert guard_margin(duration, renew) == pytest.approx(margin)
    assert poll_interval(duration, renew) == pytest.approx(poll)
    # a live agent that cannot renew stops the VM first ...
    assert fence_after(duration, renew) < duration - margin
    # ... and the guardian's latest look still comes before the expiry
    assert duration - margin + poll < duration


def test_a_lease_file_is_read_as_the_agent_writes_it() -> None:
    lease = Lease(kind="vm", vm="web1", uuid="u", host="host2", generation=7,
                  expires_at=NOW, previous_host="host1")
    assert parse_lease(json.dumps(asdict(lease))) == LeaseSeen("host2", 7, NOW, False, "host1")


@pytest.mark.parametrize("text", ["", '{"host": "host1", "generation": 4', "[]", "null",
                                  '{"host": "host1"}', '{"host": "h", "generation": "x", '
                                  '"expires_at": 1}'])
def test_a_torn_or_foreign_lease_file_tells_nothing(text: str) -> None:
    assert parse_lease(text) is None


@pytest.mark.parametrize(("role", "generation", "fenced", "alive", "needed"), [
    (VMRole.OWNER, 3, False, True, True),
    (VMRole.INCOMING, 3, False, True, True),  # took the VM over: about to run it
    (VMRole.INCOMING, None, False, True, False),  # not taken over: the source holds it
    (VMRole.SOURCE, 3, False, True, False),  # handed over: the job reads its end
    (VMRole.OWNER, None, False, True, False),  # no lease held (a postmigrate source)
    (VMRole.OWNER, 3, True, True, False),  # fenced: paused for good
    (VMRole.OWNER, 3, False, False, False),  # QEMU gone
])
def test_which_vms_need_a_guardian(role: VMRole, generation: int | None, fenced: bool,
                                   alive: bool, needed: bool) -> None:
    assert needs_guardian(role, generation, fenced, alive) is needed


def test_the_guardian_s_record_becomes_the_vm_s_last_exit(tmp_path: Path) -> None:
    assert fence_record(tmp_path) is None
    (tmp_path / "guardian-fenced.json").write_text(json.dumps(
        {"at": NOW, "reason": "its lease expires in 2.9 s and was not renewed"}))
    exit_reason = fence_record(tmp_path) or ""
    assert exit_reason.startswith("fenced by its lease guardian at ")
    assert exit_reason.endswith(": its lease expires in 2.9 s and was not renewed")
    (tmp_path / "guardian-fenced.json").write_text('{"at": ')  # torn: no reason made up
    assert fence_record(tmp_path) is None
    clear_record(tmp_path)
    assert not (tmp_path / "guardian-fenced.json").exists()


def test_the_guardian_needs_nothing_but_the_standard_library() -> None:
    """It runs as ``python -I guardian.py`` (one per VM): no Segue module, no dependency."""
    import ast
    import sys

    from segue.agent import guardian

    tree = ast.parse(Path(guardian.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_the_guardian_s_command_line_is_all_or_nothing() -> None:
    from segue.agent.guardian import GuardianError, parse_args

    argv = ["--name", "web1", "--uuid", "u", "--host", "host1", "--generation", "4",
            "--qemu-pid", "123", "--lease-file", "/l.json", "--runtime-dir", "/rt",
            "--duration", "15", "--renew", "3"]
    watch = parse_args(argv)
    assert (watch.generation, watch.qemu_pid, watch.margin) == (4, 123, 3.0)
    for bad in (argv[:-2], [*argv, "--renew", "3"], [*argv[:7], "four", *argv[8:]]):
        with pytest.raises(GuardianError):
            parse_args(bad)
