"""What every benchmark here starts from: a fresh lab, removed afterwards whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from segue.image.builder import build_image
from segue.lab.lab import lab_down, lab_up, load_state
from segue.lab.topology import LabPlan


@contextmanager
def fresh_lab(name: str, hosts: int = 2) -> Iterator[LabPlan]:
    """Lab ``name`` brought up from nothing (a leftover of an earlier run is removed first,
    the guest image built if missing); its plan; removed on the way out."""
    lab_down(name)
    build_image()
    lab_up(name, hosts)
    try:
        yield load_state(name).plan
    finally:
        lab_down(name)
