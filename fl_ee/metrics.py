"""Pure summaries of per-client results (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def mean_or_none(values: Sequence[float]) -> float | None:
    """The arithmetic mean, or ``None`` for no values."""
    return sum(values) / len(values) if values else None


def group_means(values: Sequence[float], groups: Sequence[str], order: Sequence[str]) -> dict[str, float | None]:
    """Mean of ``values`` per group, for every group in ``order`` (``None`` where empty)."""
    return {g: mean_or_none([v for v, h in zip(values, groups) if h == g]) for g in order}


def exit_means(per_client: Sequence[Sequence[float]], num_exits: int) -> dict[str, float | None]:
    """Mean accuracy at exit 1..num_exits over the clients holding that exit (ragged input)."""
    return {str(i + 1): mean_or_none([acc[i] for acc in per_client if len(acc) > i]) for i in range(num_exits)}


def round_time_stats(round_times: Sequence[float]) -> dict[str, float | None]:
    """p50, p90 (linear interpolation) and max of the rounds' virtual durations."""
    if not round_times:
        return {"p50": None, "p90": None, "max": None}
    p50, p90 = np.percentile(np.asarray(round_times, dtype=float), [50, 90])
    return {"p50": float(p50), "p90": float(p90), "max": float(max(round_times))}


def straggler_summary(tier_counts: Sequence[Mapping[str, Mapping[str, int]]], round_times: Sequence[float],
                      wasted_compute_s: Sequence[float]) -> dict[str, Any]:
    """Stragglers over a run from each round's outcome counts per tier.

    ``late_fraction``: late updates over sampled client-rounds. ``dropped_updates``:
    updates started but not aggregated (late + failed). ``participation_by_tier``: the
    fraction of a tier's sampled clients whose update was aggregated (``None`` if never
    sampled).
    """
    totals: dict[str, dict[str, int]] = {}
    for rnd in tier_counts:
        for tier, counts in rnd.items():
            acc = totals.setdefault(tier, {})
            for key, n in counts.items():
                acc[key] = acc.get(key, 0) + n
    sampled = sum(c.get("sampled", 0) for c in totals.values())
    late = sum(c.get("late", 0) for c in totals.values())
    failed = sum(c.get("failed", 0) for c in totals.values())
    return {
        "round_time_s": round_time_stats(round_times),
        "late_fraction": late / sampled if sampled else 0.0,
        "dropped_updates": late + failed,
        "unavailable": sum(c.get("unavailable", 0) for c in totals.values()),
        "participation_by_tier": {t: (c.get("ok", 0) / c["sampled"] if c.get("sampled") else None)
                                  for t, c in totals.items()},
        "wasted_compute_s": float(sum(wasted_compute_s)),
    }


def time_to_accuracy(points: Sequence[tuple[float, float | None]], target: float) -> float | None:
    """The first virtual time whose accuracy reaches ``target`` (``None`` if never or no target)."""
    if target <= 0:
        return None
    return next((t for t, acc in points if acc is not None and acc >= target), None)
