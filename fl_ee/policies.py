"""Exit policies: at inference a sample leaves at the first exit the policy lets it leave at.

Pure functions over each exit's logits. ``entropy`` and ``max-prob`` compare a
confidence with a threshold; ``calibrated`` is ``max-prob`` on temperature-scaled logits
(the caller scales them, :mod:`fl_ee.calibration`); ``patience`` (PABEE) leaves once
``patience`` consecutive exits agree on the class. Every policy is also run over a
fixed grid of thresholds (:func:`policy_grid`), the curve the threshold rules of
:mod:`fl_ee.thresholds` choose from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

POLICIES = ("entropy", "max-prob", "calibrated", "patience")
# thresholds every confidence policy is evaluated at: fine near 0 (entropy) and near 1 (max-prob)
CONFIDENCE_GRID = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99,
                   0.995, 0.999, 1.0)


def policy_grid(policy: str, threshold: float, patience: int, max_depth: int) -> tuple[float, ...]:
    """The thresholds ``policy`` is evaluated at: patience 1..max_depth, else the confidence grid.

    The configured ``threshold`` (or ``patience``) is always on it, so the ``fixed`` rule
    is a point of the curve.
    """
    if policy == "patience":
        return tuple(float(p) for p in range(1, max(max_depth, patience) + 1))
    return tuple(sorted({*CONFIDENCE_GRID, threshold}))


def confident(logits: torch.Tensor, policy: str, threshold: float) -> torch.Tensor:
    """Which rows may exit here.

    ``entropy``: normalised entropy H(p) / log(K) at most ``threshold``; ``max-prob`` and
    ``calibrated``: the top class probability at least ``threshold``.
    """
    p = torch.softmax(logits.float(), dim=1)
    if policy == "entropy":
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1)
        return entropy / math.log(p.shape[1]) <= threshold
    if policy in ("max-prob", "calibrated"):
        return p.max(dim=1).values >= threshold
    raise ValueError(f"unknown confidence policy {policy!r}")


def patience_choice(predictions: torch.Tensor, patience: int) -> torch.Tensor:
    """The exit each sample leaves at under PABEE: the first whose class the ``patience - 1`` exits before it share.

    ``predictions`` is (exits, N); the last exit takes whoever is left.
    """
    exits, n = predictions.shape
    chosen = torch.full((n,), exits - 1, dtype=torch.long)
    undecided = torch.ones(n, dtype=torch.bool)
    streak = torch.zeros(n, dtype=torch.long)
    for i in range(exits - 1):
        same = predictions[i] == predictions[i - 1] if i else torch.zeros(n, dtype=torch.bool)
        streak = torch.where(same, streak + 1, 1)
        leave = undecided & (streak >= patience)
        chosen[leave] = i
        undecided &= ~leave
    return chosen


def exit_choice(logits: Sequence[torch.Tensor], policy: str, threshold: float) -> torch.Tensor:
    """The exit (0-based) each sample leaves at; the last exit takes whoever is left.

    For ``patience`` the threshold is the patience (a whole number).
    """
    if policy == "patience":
        return patience_choice(torch.stack([z.argmax(dim=1) for z in logits]), round(threshold))
    last = len(logits) - 1
    chosen = torch.full((logits[0].shape[0],), last, dtype=torch.long)
    undecided = torch.ones_like(chosen, dtype=torch.bool)
    for i, z in enumerate(logits[:-1]):
        leave = undecided & confident(z, policy, threshold)
        chosen[leave] = i
        undecided &= ~leave
    return chosen


@dataclass(frozen=True)
class AdaptiveResult:
    """Outcome of early-exit inference over a test set."""

    accuracy: float
    expected_flops: float
    exit_fractions: tuple[float, ...]


def adaptive_inference(
    logits: Sequence[torch.Tensor], y: torch.Tensor, exit_costs: Sequence[float], policy: str, threshold: float
) -> AdaptiveResult:
    """Accuracy, mean FLOPs per sample and the share leaving at each exit under a policy.

    ``exit_costs[i]`` is the cost of leaving at exit i (stages and heads 1..i).
    """
    chosen = exit_choice(logits, policy, threshold)
    stacked = torch.stack([z.argmax(dim=1) for z in logits])  # (exits, N)
    predictions = stacked.gather(0, chosen[None]).squeeze(0)
    n = max(len(y), 1)
    counts = torch.bincount(chosen, minlength=len(logits)).double()
    return AdaptiveResult(
        accuracy=float((predictions == y).double().sum() / n),
        expected_flops=float((counts * torch.as_tensor(exit_costs, dtype=torch.float64)).sum() / n),
        exit_fractions=tuple(float(c / n) for c in counts),
    )


def overthinking(logits: Sequence[torch.Tensor], y: torch.Tensor) -> float:
    """Share of samples right at some earlier exit but wrong at the deepest (Kaya et al., SDN)."""
    if len(logits) < 2 or not len(y):
        return 0.0
    right = torch.stack([z.argmax(dim=1) == y for z in logits])
    return float((right[:-1].any(dim=0) & ~right[-1]).double().mean())
