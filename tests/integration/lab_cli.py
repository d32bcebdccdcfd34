"""What every integration test needs to drive a lab as a user would: the ``segue`` CLI against
the lab's controller, the fields of a guest checker's VERIFY reply (and a guest's boot id,
its memory verified), and when a migration job held its slots."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from typing import Any

from segue.image.protocol import parse_verify
from segue.lab import guests
from segue.lab.lab import load_state
from segue.lab.topology import LabPlan


def run(lab: str, *args: str, check: bool = True,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m segue ARGS`` with ``SEGUE_URL`` set to lab ``lab``'s controller; with
    ``check``, a non-zero exit fails the test with both outputs."""
    env = {**os.environ, "SEGUE_URL": f"unix:{load_state(lab).plan.controller.socket}"}
    proc = subprocess.run([sys.executable, "-m", "segue", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"segue {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def verify_fields(line: str) -> dict[str, str]:
    """The ``key=value`` fields of a VERIFY reply, which must parse as one (16-hex boot id,
    result ok or fail, every count)."""
    parse_verify(line)
    return dict(tok.split("=", 1) for tok in line.split()[1:] if "=" in tok)


def boot_of(plan: LabPlan, name: str) -> str:
    """The guest's boot id, once its checker verified its memory (fails the test if not)."""
    verdict = verify_fields(guests.verify_vm(plan, name))
    assert verdict["result"] == "ok", verdict
    return verdict["boot"]


def held_slots(job: dict[str, Any]) -> tuple[datetime, datetime]:
    """When a job (``migration show --json``) held its slots: from entering ``check`` to its
    end."""
    start = next(t["at"] for t in job["transitions"] if t["to"] == "check")
    return datetime.fromisoformat(start), datetime.fromisoformat(job["finished_at"])
