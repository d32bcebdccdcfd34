"""Where Segue keeps its files.

Everything lives under one data directory: ``$SEGUE_HOME`` if set, else ``/var/lib/segue``.
The image cache is ``<home>/images``, a lab is ``<home>/lab/<name>``.
"""

from __future__ import annotations

import os
from pathlib import Path


def segue_home() -> Path:
    """The data directory (not created here)."""
    return Path(os.environ.get("SEGUE_HOME", "/var/lib/segue"))


def image_cache_dir() -> Path:
    return segue_home() / "images"


def lab_dir(name: str) -> Path:
    return segue_home() / "lab" / name
