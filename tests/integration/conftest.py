"""Integration tests run real QEMU guests in real network namespaces: they need root.

They never skip: without root they fail, loudly, so a green run always means they ran.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces, taps): run `make test` "
                    "as root", pytrace=False)
