"""The learning rate of each round, a pure function of the training config (no torch: ``fl-ee check`` prints it)."""

from __future__ import annotations

import math

from fl_ee.core.config import TrainingConfig


def round_lr(cfg: TrainingConfig, rounds: int, server_round: int) -> float:
    """The learning rate of round ``server_round`` (1-based) of a ``rounds``-round run, by ``lr_schedule``.

    ``constant``: ``lr``. ``exp``: ``lr * lr_decay^(r - 1)`` (DepthFL). ``step``: ``lr``
    times ``lr_gamma`` once for each milestone below ``r`` (ScaleFL; as torch's
    ``MultiStepLR`` stepped after every round). ``cosine``: from ``lr`` in round 1 to
    ``lr_min`` in the last, ``lr_min + (lr - lr_min) (1 + cos(pi (r - 1) / (rounds - 1))) / 2``
    (ReeFL). The server sends it in each round's instructions; every local step of the
    round (shared, personal, fine-tuning) trains at it.
    """
    r = server_round
    if cfg.lr_schedule == "exp":
        return cfg.lr * cfg.lr_decay ** (r - 1)
    if cfg.lr_schedule == "step":
        return cfg.lr * cfg.lr_gamma ** sum(m < r for m in cfg.lr_milestones)
    if cfg.lr_schedule == "cosine":
        done = (r - 1) / max(rounds - 1, 1)
        return cfg.lr_min + (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * done)) / 2
    return cfg.lr
