"""What every integration test needs to drive a lab as a user would: the ``segue`` CLI against
the lab's controller, and the fields of a guest checker's VERIFY reply."""

from __future__ import annotations

import os
import subprocess
import sys

from segue.image.protocol import parse_verify
from segue.lab.lab import load_state


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
