"""The on-disk cache shared by every process of a run: ``$FL_EE_CACHE`` or ``~/.cache/fl-ee``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where decoded datasets and client splits are cached."""
    return Path(os.environ.get("FL_EE_CACHE", Path.home() / ".cache" / "fl-ee"))
