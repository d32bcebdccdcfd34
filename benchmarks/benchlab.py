"""What every benchmark here starts from: a fresh lab, removed afterwards whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from segue.image.builder import build_image
from segue.lab.lab import lab_down, lab_up, load_state
from segue.lab.topology import LabPlan


@contextmanager
def fresh_lab(name: str, hosts: int = 2, controller_settings: dict[str, Any] | None = None
              ) -> Iterator[LabPlan]:
    """Lab ``name`` brought up from nothing (a leftover of an earlier run is removed first,
    the guest image built if missing), its controller with ``controller_settings`` (e.g.
    ``{"max_outgoing_per_host": 8}``); its plan; removed on the way out."""
    lab_down(name)
    build_image()
    lab_up(name, hosts, controller_settings=controller_settings)
    try:
        yield load_state(name).plan
    finally:
        lab_down(name)
