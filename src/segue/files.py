"""Small file helpers shared by the agent, the QEMU layer and the lab."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON so readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def log_tail(path: Path, lines: int = 3, sep: str = " | ") -> str:
    """The last ``lines`` lines of a log file joined with ``sep`` ('' if it cannot be read)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return sep.join(text[-lines:])
