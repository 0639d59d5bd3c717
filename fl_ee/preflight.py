"""The preflight: every check a run needs, before Ray starts and before a run directory exists.

``fl-ee run`` and the ServerApp (``flwr run``) both call :func:`preflight`, so any bad
input (missing or unreadable data, a split that cannot be made, an unknown strategy or
option) ends as one line and exit code 2 before anything is started or written.
"""

from __future__ import annotations

from pathlib import Path

from fl_ee.config import Config
from fl_ee.data import run_splits
from strategies import build_strategy


def resolve_paths(cfg: Config) -> Config:
    """Make ``data.root`` absolute, so every process (Ray workers too) reads the same files."""
    root = str(Path(cfg.data.root).expanduser().resolve())
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": root})})


def preflight(cfg: Config) -> Config:
    """Check the data, the split and the strategy; return the config with absolute paths.

    Raises :class:`~fl_ee.errors.UserError` naming the key at fault. The dataset and the
    split are cached on the way (in this process and on disk), so the run reuses them.
    """
    cfg = resolve_paths(cfg)
    run_splits(cfg)  # loads the dataset, then splits it over the clients
    build_strategy(cfg)
    return cfg
