"""The preflight: every check a run needs, before Ray starts and before a run directory exists.

``fl-ee run``, ``fl-ee check`` and the ServerApp (``flwr run``) all call :func:`preflight`,
so any bad input (missing or unreadable data, a split that cannot be made, an unknown
strategy, client algorithm or option) ends as one line and exit code 2 before anything is started or
written, and a valid but degenerate config (a tier without clients, no client ever
online) is named in a ``fl-ee: warning:`` line.
"""

from __future__ import annotations

from pathlib import Path

from fl_ee.core.config import Config
from fl_ee.core.errors import UserError, warn
from fl_ee.data.datasets import load_dataset, run_splits
from fl_ee.learning.algorithm import build_algorithm
from fl_ee.models import build_model, load_weights, measure_flops
from sims.tiers import tier_counts
from strategies import build_strategy
from strategies.feddyn import client_alpha


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def resolve_paths(cfg: Config) -> Config:
    """Make ``data.root`` and ``model.weights`` absolute, so every process (Ray workers too) reads the same files."""
    model = cfg.model.model_copy(update={"weights": _absolute(cfg.model.weights)}) if cfg.model.weights else cfg.model
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": _absolute(cfg.data.root)}),
                                  "model": model})


def preflight(cfg: Config) -> Config:
    """Check the data, the split, the strategy and the client algorithm; return the config with absolute paths.

    Raises :class:`~fl_ee.core.errors.UserError` naming the key at fault. The dataset and the
    split are cached on the way (in this process and on disk), so the run reuses them.
    """
    cfg = resolve_paths(cfg)
    run_splits(cfg)  # loads the dataset, then splits it over the clients
    check_model(cfg)
    build_strategy(cfg)
    build_algorithm(cfg)
    for line in config_warnings(cfg):
        warn(line)
    return cfg


def check_model(cfg: Config) -> None:
    """The network runs on the dataset's images (a sample through every stage and exit, FLOPs counted).

    ``model.weights``, when set, must fit it key by key and shape by shape.
    """
    data = load_dataset(cfg.data)
    _, _, height, width = data.train_x.shape
    try:
        model = build_model(data.model_spec(cfg.model))
        measure_flops(model)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"a {cfg.model.backbone} of width {cfg.model.width} cannot run on {height}x{width} "
                        f"images ({exc}); raise model.width", key="model.width") from None
    if cfg.model.weights:
        load_weights(model, cfg.model.weights)


def config_warnings(cfg: Config) -> list[str]:
    """Valid but degenerate choices: a tier without clients, tiers whose clients are never online, FedProx on FedDyn."""
    counts = tier_counts([t.share for t in cfg.tiers], cfg.data.num_clients)
    found = [f"tier {t.name!r} gets no client (share {t.share:g} of {cfg.data.num_clients} clients); "
             f"raise tiers.{i}.share or data.num_clients" for i, (t, n) in enumerate(zip(cfg.tiers, counts)) if not n]
    populated = [(i, t) for i, (t, n) in enumerate(zip(cfg.tiers, counts)) if n]
    offline = [(i, t) for i, t in populated if t.availability == 0]
    if populated and len(offline) == len(populated):
        found.append("every tier has availability 0: no client will ever train, so the run will not be a result")
    else:
        found += [f"tier {t.name!r} has availability 0: its clients will never train; raise tiers.{i}.availability"
                  for i, t in offline]
    if cfg.training.prox_mu > 0 and client_alpha(cfg) > 0:
        found.append("training.prox_mu adds a second quadratic term to FedDyn's own (alpha); set it to 0 for FedDyn")
    return found
