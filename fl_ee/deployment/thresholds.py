"""Threshold rules: which point of a policy's accuracy-vs-FLOPs curve to deploy, and the curves' Pareto front.

A curve is a policy's accuracy and FLOPs per sample at each threshold of its grid
(:func:`fl_ee.deployment.policies.policy_grid`), measured on calibration samples. The rules pick
an index of the grid: ``fixed`` the configured threshold, ``budget`` the most accurate
point within a FLOPs budget, ``accuracy`` the cheapest point within ``max_drop`` of
the deepest exit. Curves of several clients pool by their sample counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RULES = ("fixed", "budget", "accuracy")
_TIE = 1e-12  # accuracies this close count as equal


@dataclass(frozen=True)
class Curve:
    """Accuracy and FLOPs per sample (a fraction of the full submodel's) per grid point; the deepest exit's accuracy."""

    accuracy: tuple[float, ...]
    flops: tuple[float, ...]
    deepest: float


def select(curve: Curve, rule: str, *, fixed: int, budget: float, max_drop: float) -> int:
    """The grid index ``rule`` picks on ``curve``.

    ``budget``: the most accurate point whose FLOPs fraction is at most ``budget`` (the
    cheapest on a tie), else the cheapest point. ``accuracy``: the cheapest point whose
    accuracy is at least ``deepest - max_drop`` (the most accurate on a tie), else the
    most accurate point. ``fixed``: the index ``fixed``.
    """
    points = range(len(curve.accuracy))
    if rule == "fixed":
        return fixed
    if rule == "budget":
        within = [i for i in points if curve.flops[i] <= budget + _TIE]
        if not within:
            return min(points, key=lambda i: (curve.flops[i], -curve.accuracy[i]))
        return max(within, key=lambda i: (curve.accuracy[i], -curve.flops[i]))
    if rule == "accuracy":
        good = [i for i in points if curve.accuracy[i] >= curve.deepest - max_drop - _TIE]
        if not good:
            return max(points, key=lambda i: (curve.accuracy[i], -curve.flops[i]))
        return min(good, key=lambda i: (curve.flops[i], -curve.accuracy[i]))
    raise ValueError(f"unknown threshold rule {rule!r}")


def pooled(curves: Sequence[Curve], weights: Sequence[float]) -> Curve:
    """The curve of all the samples behind ``curves``: each figure averaged with ``weights`` (sample counts)."""
    total = sum(weights)
    if not curves or total <= 0:
        raise ValueError("pooling needs at least one curve with samples")

    def mean(values: Sequence[float]) -> float:
        return sum(v * w for v, w in zip(values, weights)) / total

    points = range(len(curves[0].accuracy))
    return Curve(accuracy=tuple(mean([c.accuracy[i] for c in curves]) for i in points),
                 flops=tuple(mean([c.flops[i] for c in curves]) for i in points),
                 deepest=mean([c.deepest for c in curves]))


def pareto_front(accuracy: Sequence[float], flops: Sequence[float]) -> list[int]:
    """Indices of the points no other beats (as cheap and more accurate, or cheaper and as accurate), by FLOPs."""
    order = sorted(range(len(flops)), key=lambda i: (flops[i], -accuracy[i]))
    front: list[int] = []
    for i in order:
        if not front or accuracy[i] > accuracy[front[-1]]:
            front.append(i)
    return front
