"""Exit policies: at inference a sample leaves at the first exit confident enough."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

SWEEP_THRESHOLDS = tuple(i / 10 for i in range(11))  # the grid of thresholds clients evaluate at


def confident(logits: torch.Tensor, policy: str, threshold: float) -> torch.Tensor:
    """Which rows may exit here.

    ``entropy``: normalised entropy H(p) / log(K) at most ``threshold``;
    ``max-prob``: the top class probability at least ``threshold``.
    """
    p = torch.softmax(logits.float(), dim=1)
    if policy == "entropy":
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1)
        return entropy / math.log(p.shape[1]) <= threshold
    if policy == "max-prob":
        return p.max(dim=1).values >= threshold
    raise ValueError(f"unknown exit policy {policy!r}")


def exit_choice(logits: Sequence[torch.Tensor], policy: str, threshold: float) -> torch.Tensor:
    """The exit (0-based) each sample leaves at; the last exit takes whoever is left."""
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
