"""Calibration of the exits: temperature scaling (Guo et al. 2017) and the expected calibration error.

Pure functions over logits. Each exit gets its own temperature T, fitted on held-out
samples by minimising the negative log-likelihood of softmax(z / T); reliability bins
(count, correct, summed confidence per confidence bin) pool over samples and clients,
and the ECE follows from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

RELIABILITY_BINS = 10  # equal-width confidence bins of the reliability diagram and the ECE
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 100.0
_FIT_STEPS = 40  # bisection steps on the inverse temperature (its interval shrinks 2^40-fold)
_SURE = 1e-10  # a fast derivative this far from 0 (times 1 + the largest |logit|) has the reference's sign: their
# rounding differs by some K x 1e-16 x the largest |logit| (K classes), over 1000 times less for K <= 100


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The temperature T in [MIN_TEMPERATURE, MAX_TEMPERATURE] minimising the mean NLL of softmax(logits / T).

    The NLL is convex in beta = 1/T, with derivative E_p[z] - z_y (the expected minus the
    true logit) increasing in beta, so a bisection on that derivative finds the optimum.
    No samples: T = 1.

    Only the derivative's sign steers the bisection. It is read off a fast evaluation (the
    softmax over the classes of a (classes, samples) copy, vectorised across samples) unless
    that lies within ``_SURE`` (relative to the logits) of 0; there, and only there, the
    reference evaluation (the softmax over the rows of the logits) decides. The two differ
    by rounding alone, orders of magnitude below that margin, so every step goes the way
    the reference alone would take it, and T is the same to the bit.
    """
    if not len(y):
        return 1.0
    z = logits.double()
    true = z.gather(1, y[:, None]).squeeze(1)
    columns = z.T.contiguous()  # (K, N)
    margin = _SURE * (1 + float(z.abs().max()))  # NaN or inf logits: every sign from the reference

    def slope(beta: float) -> float:
        fast = float(((torch.softmax(beta * columns, dim=0) * columns).sum(dim=0) - true).mean())
        if abs(fast) > margin:
            return fast
        p = torch.softmax(beta * z, dim=1)
        return float(((p * z).sum(dim=1) - true).mean())

    low, high = 1 / MAX_TEMPERATURE, 1 / MIN_TEMPERATURE
    if slope(low) >= 0:
        return MAX_TEMPERATURE
    if slope(high) <= 0:
        return MIN_TEMPERATURE
    for _ in range(_FIT_STEPS):
        mid = (low + high) / 2
        low, high = (mid, high) if slope(mid) < 0 else (low, mid)
    return 1 / ((low + high) / 2)


def fit_temperatures(logits: Sequence[torch.Tensor], y: torch.Tensor) -> tuple[float, ...]:
    """One temperature per exit."""
    return tuple(fit_temperature(z, y) for z in logits)


def scaled(logits: Sequence[torch.Tensor], temperatures: Sequence[float]) -> list[torch.Tensor]:
    """Each exit's logits divided by its temperature."""
    return [z / t for z, t in zip(logits, temperatures)]


def reliability_bins(logits: Sequence[torch.Tensor], y: torch.Tensor, bins: int = RELIABILITY_BINS) -> torch.Tensor:
    """(bins, 3): per equal-width bin of top-class probability, the samples, the right ones and their summed confidence.

    Every (sample, exit) pair counts once.
    """
    return pooled_bins(exit_bins([torch.softmax(z.double(), dim=1) for z in logits], y, bins), bins)


def exit_bins(probs: Sequence[torch.Tensor], y: torch.Tensor, bins: int = RELIABILITY_BINS) -> list[torch.Tensor]:
    """Each exit's (bins, 3) reliability table (:func:`reliability_bins`) from its class probabilities."""
    tables = []
    for q in probs:
        table = torch.zeros(bins, 3, dtype=torch.float64)
        confidence, predicted = q.max(dim=1)
        index = (confidence * bins).long().clamp_(0, bins - 1)
        table[:, 0] += torch.bincount(index, minlength=bins)
        table[:, 1] += torch.bincount(index, weights=(predicted == y).double(), minlength=bins)
        table[:, 2] += torch.bincount(index, weights=confidence, minlength=bins)
        tables.append(table)
    return tables


def pooled_bins(tables: Sequence[torch.Tensor], bins: int = RELIABILITY_BINS) -> torch.Tensor:
    """The exits' reliability tables summed, in exit order."""
    total = torch.zeros(bins, 3, dtype=torch.float64)
    for table in tables:
        total += table
    return total


def ece(bins: torch.Tensor) -> float | None:
    """Expected calibration error: sum over bins of |right - summed confidence| / samples; ``None`` without samples."""
    total = float(bins[:, 0].sum())
    return float((bins[:, 1] - bins[:, 2]).abs().sum()) / total if total else None


def exit_ece(logits: Sequence[torch.Tensor], y: torch.Tensor) -> tuple[float, ...]:
    """The ECE of each exit (0 without samples)."""
    return bins_ece(exit_bins([torch.softmax(z.double(), dim=1) for z in logits], y))


def bins_ece(tables: Sequence[torch.Tensor]) -> tuple[float, ...]:
    """The ECE of each exit's reliability table (0 without samples)."""
    return tuple(ece(table) or 0.0 for table in tables)
