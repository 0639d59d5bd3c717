"""Exit policies: at inference a sample leaves at the first exit the policy lets it leave at.

Pure functions over each exit's logits. ``entropy`` and ``max-prob`` compare a
confidence with a threshold; ``calibrated`` is ``max-prob`` on temperature-scaled logits
(the caller scales them, :mod:`fl_ee.deployment.calibration`); ``patience`` (PABEE) leaves once
``patience`` consecutive exits agree on the class. Every policy is also run over a
fixed grid of thresholds (:func:`policy_grid`), the curve the threshold rules of
:mod:`fl_ee.deployment.thresholds` choose from.
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


@dataclass(frozen=True)
class ExitOutputs:
    """One split's exits as every policy reads them, computed once: class probabilities and predictions.

    ``probs``: softmax of each exit's logits (float64, (N, K) each); ``predictions``:
    (exits, N), each exit's arg-max class.
    """

    probs: list[torch.Tensor]
    predictions: torch.Tensor


def exit_outputs(logits: Sequence[torch.Tensor]) -> ExitOutputs:
    """The probabilities and predictions of every exit's ``logits``."""
    return ExitOutputs([torch.softmax(z.double(), dim=1) for z in logits],
                       torch.stack([z.argmax(dim=1) for z in logits]))


def exit_scores(logits: Sequence[torch.Tensor], policy: str) -> torch.Tensor:
    """(exits, N): what the policy compares with its threshold at each exit (:func:`output_scores`)."""
    return output_scores(exit_outputs(logits), policy)


def output_scores(outputs: ExitOutputs, policy: str) -> torch.Tensor:
    """(exits, N): what the policy compares with its threshold at each exit.

    ``entropy``: the normalised entropy H(p) / log(K); ``max-prob`` and ``calibrated``:
    the top class probability; ``patience``: how many consecutive exits up to this one
    predict this exit's class.
    """
    if policy == "patience":
        predictions = outputs.predictions
        streaks = [torch.ones_like(predictions[0])]
        for i in range(1, len(predictions)):
            streaks.append(torch.where(predictions[i] == predictions[i - 1], streaks[-1] + 1, 1))
        return torch.stack(streaks)
    p = outputs.probs
    if policy == "entropy":
        return torch.stack([-(q * torch.log(q.clamp_min(1e-300))).sum(dim=1) / math.log(q.shape[1]) for q in p])
    if policy in ("max-prob", "calibrated"):
        return torch.stack([q.max(dim=1).values for q in p])
    raise ValueError(f"unknown exit policy {policy!r}")


def exit_choices(scores: torch.Tensor, policy: str, thresholds: Sequence[float]) -> torch.Tensor:
    """(thresholds, N): the exit (0-based) each sample leaves at under each threshold.

    The first exit whose score passes; the last exit takes the rest. Entropy passes at
    most the threshold, the others at least (patience: its whole number).
    """
    if policy == "patience":
        bounds = torch.tensor([round(t) for t in thresholds], dtype=scores.dtype)
    else:
        bounds = torch.tensor([float(t) for t in thresholds], dtype=scores.dtype)
    bounds = bounds.view(-1, 1)
    chosen = torch.full((len(thresholds), scores.shape[1]), len(scores) - 1, dtype=torch.long)
    for i in range(len(scores) - 2, -1, -1):  # deepest first, so the first exit that lets a sample leave wins
        leave = scores[i] <= bounds if policy == "entropy" else scores[i] >= bounds  # (thresholds, N)
        chosen = torch.where(leave, i, chosen)
    return chosen


def exit_choice(logits: Sequence[torch.Tensor], policy: str, threshold: float) -> torch.Tensor:
    """The exit (0-based) each sample leaves at under ``policy`` (for ``patience``, threshold = the patience)."""
    return exit_choices(exit_scores(logits, policy), policy, [threshold])[0]


@dataclass(frozen=True)
class AdaptiveResult:
    """Outcome of early-exit inference over a test set."""

    accuracy: float
    expected_flops: float
    exit_fractions: tuple[float, ...]


def adaptive_sweep(
    logits: Sequence[torch.Tensor], y: torch.Tensor, exit_costs: Sequence[float], policy: str,
    thresholds: Sequence[float],
) -> list[AdaptiveResult]:
    """Accuracy, mean FLOPs per sample and the share leaving at each exit under a policy, at each threshold.

    ``exit_costs[i]`` is the cost of leaving at exit i (stages and heads 1..i).
    """
    return output_sweep(exit_outputs(logits), y, exit_costs, policy, thresholds)


def output_sweep(
    outputs: ExitOutputs, y: torch.Tensor, exit_costs: Sequence[float], policy: str, thresholds: Sequence[float],
) -> list[AdaptiveResult]:
    """:func:`adaptive_sweep` over exits already turned into :class:`ExitOutputs` (shared by the policies)."""
    scores = output_scores(outputs, policy)
    right = (outputs.predictions == y).double()  # (exits, N)
    costs = torch.as_tensor(exit_costs, dtype=torch.float64)
    n = max(len(y), 1)
    chosen = exit_choices(scores, policy, thresholds)  # (thresholds, N)
    counts = torch.zeros(len(thresholds), len(outputs.probs), dtype=torch.float64)
    counts.scatter_add_(1, chosen, torch.ones_like(chosen, dtype=torch.float64))  # (thresholds, exits)
    accuracy = (right.gather(0, chosen).sum(dim=1) / n).tolist()
    flops = ((counts * costs).sum(dim=1) / n).tolist()
    fractions = (counts / n).tolist()
    return [AdaptiveResult(accuracy=a, expected_flops=f, exit_fractions=tuple(e))
            for a, f, e in zip(accuracy, flops, fractions)]


def overthinking(logits: Sequence[torch.Tensor], y: torch.Tensor) -> float:
    """Share of samples right at some earlier exit but wrong at the deepest (Kaya et al., SDN)."""
    if len(logits) < 2 or not len(y):
        return 0.0
    right = torch.stack([z.argmax(dim=1) == y for z in logits])
    return float((right[:-1].any(dim=0) & ~right[-1]).double().mean())
