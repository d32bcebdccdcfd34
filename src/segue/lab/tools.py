"""The lab's measuring tools (prober, sniffer, stream scan) run as ``python -m <module>``
inside a lab namespace, in the background: ``spawn`` starts one (and, for a tool that says
``listening`` on stderr once its socket is bound, returns only then), ``finish`` sends it
SIGTERM and reads the JSON result it prints on stdout.

Errors: ``Unavailable`` with the caller's code (``SNIFFER_FAILED``, ``PROBE_FAILED``) when
the tool cannot start or ends with an error, its own message in the text.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from segue.domain.errors import Unavailable


@dataclass(frozen=True)
class Tool:
    """How a tool's failures are reported: its code, what it is (``sniffer on ns/if``)
    and the hint."""

    code: str
    what: str
    hint: str = "check the lab's namespaces"

    def failed(self, detail: str) -> Unavailable:
        return Unavailable(self.code, f"{self.what} failed: {detail.strip()[-500:]}", self.hint)


def spawn(tool: Tool, ns: str, module: str, args: Sequence[str], *,
          listening: bool) -> subprocess.Popen[str]:
    """Start ``python -m module args`` in namespace ``ns``; with ``listening``, wait for its
    ``listening`` line (raises the tool's Unavailable if it dies first)."""
    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", module, *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if listening:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "listening", or EOF if it died
        if line.strip() != "listening":
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise tool.failed(line + err)
    return proc


def finish(tool: Tool, proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """End the tool (SIGTERM) and return the JSON result it printed."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise tool.failed(err)
    result: dict[str, Any] = json.loads(out)
    return result
