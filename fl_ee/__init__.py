"""fl-ee: federated personalisation of early-exit networks across device tiers.

The Python API (:mod:`fl_ee.api`) is here: ``fl_ee.run``, ``fl_ee.resume``,
``fl_ee.load_run``, ``fl_ee.sweep``, ``fl_ee.load_sweep``, ``fl_ee.compare``, and the
result types ``fl_ee.Run`` and ``fl_ee.Sweep``. They are imported on first use, so that
``import fl_ee`` and the command's one-line errors stay fast.

A simulator sends nothing over the network: Flower's telemetry and Ray's usage
statistics are off unless the user's environment turns them on explicitly. This runs
before any module of fl-ee imports Flower or Ray.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

__all__ = ["Run", "Sweep", "compare", "load_run", "load_sweep", "resume", "run", "sweep"]


def __getattr__(name: str) -> Any:
    """The API's names, imported from :mod:`fl_ee.api` when first asked for."""
    if name in __all__:
        from fl_ee import api

        return getattr(api, name)
    raise AttributeError(f"module 'fl_ee' has no attribute {name!r}")
