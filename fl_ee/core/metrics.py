"""Pure summaries of per-client results (no I/O).

Fairness is measured over per-client values (each client counts once); efficiency
over test samples (each sample counts once), so its figures are per-sample costs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def mean_or_none(values: Sequence[float]) -> float | None:
    """The arithmetic mean, or ``None`` for no values."""
    return sum(values) / len(values) if values else None


def weighted_average(values: Sequence[float], weights: Sequence[float]) -> float | None:
    """``sum(w * v) / sum(w)``, or ``None`` when the weights sum to zero."""
    total = sum(weights)
    return sum(w * v for v, w in zip(values, weights)) / total if total else None


def group_means(values: Sequence[float], groups: Sequence[str], order: Sequence[str]) -> dict[str, float | None]:
    """Mean of ``values`` per group, for every group in ``order`` (``None`` where empty)."""
    return {g: mean_or_none([v for v, h in zip(values, groups) if h == g]) for g in order}


def exit_means(per_client: Sequence[Sequence[float]], num_exits: int) -> dict[str, float | None]:
    """Mean accuracy at exit 1..num_exits over the clients holding that exit (ragged input)."""
    return {str(i + 1): mean_or_none([acc[i] for acc in per_client if len(acc) > i]) for i in range(num_exits)}


# ------------------------------------------------------------------------ fairness


def population_std(values: Sequence[float]) -> float | None:
    """Standard deviation with divisor n (the clients are the whole population)."""
    mean = mean_or_none(values)
    return None if mean is None else math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def tail_mean(values: Sequence[float], percent: int = 10, *, highest: bool = False) -> float | None:
    """Mean of the lowest (or highest) ``ceil(percent% of n)`` values, at least one (q-FFL's worst/best 10%)."""
    if not values:
        return None
    k = max(1, -(-len(values) * percent // 100))  # integer ceil: no 0.1 * 30 = 3.0000000000000004
    ordered = sorted(values, reverse=highest)
    return sum(ordered[:k]) / k


def bottom_decile(values: Sequence[float]) -> float | None:
    """pFL-Bench's bottom decile: the value at 0-based position ``n // 10`` of the ascending order.

    An order statistic, not a mean (that is :func:`tail_mean`): of 10 clients the second
    worst, of 20 the third. FederatedScope's ``Monitor.format_eval_res`` (pFL-Bench) reads
    ``sorted(values)[n // 10]``.
    """
    return sorted(values)[len(values) // 10] if values else None


def top_decile(values: Sequence[float]) -> float | None:
    """pFL-Bench's top decile: the value at 0-based position ``9 n // 10`` of the ascending order.

    Of 10 clients the best, of 20 the second best (``sorted(values)[9 * n // 10]``).
    """
    return sorted(values)[9 * len(values) // 10] if values else None


def jain_index(values: Sequence[float]) -> float | None:
    """Jain's index ``(sum x)^2 / (n sum x^2)``: 1 when all equal, 1/n when one client has everything.

    All zeros count as equal (1.0).
    """
    if not values:
        return None
    squares = sum(v * v for v in values)
    return sum(values) ** 2 / (len(values) * squares) if squares else 1.0


def gini(values: Sequence[float]) -> float | None:
    """Gini coefficient ``sum_ij |x_i - x_j| / (2 n^2 mean)``: 0 when all equal; all zeros give 0."""
    if not values:
        return None
    n, total = len(values), sum(values)
    if not total:
        return 0.0
    # sum_ij |x_i - x_j| = 2 * sum_i (2i - n - 1) x_(i) over the ascending order, i = 1..n
    pairwise = 2 * sum((2 * i - n - 1) * x for i, x in enumerate(sorted(values), start=1))
    return pairwise / (2 * n * total)


def spread(by_group: Mapping[str, float | None]) -> float | None:
    """Largest minus smallest group value, ignoring groups without one (``None`` if none has)."""
    present = [v for v in by_group.values() if v is not None]
    return max(present) - min(present) if present else None


def fairness(values: Sequence[float], groups: Sequence[str], order: Sequence[str]) -> dict[str, Any]:
    """The ``fairness`` section: per-client ``values`` (with each client's group) summarised.

    ``worst10`` / ``best10`` are q-FFL's tail means, ``bottom_decile`` / ``top_decile``
    pFL-Bench's order statistics, ``std`` the population standard deviation (pFL-Bench's,
    NumPy's ``np.std``).
    """
    by_group = group_means(values, groups, order)
    return {
        "mean": mean_or_none(values),
        "std": population_std(values),
        "min": min(values) if values else None,
        "worst10": tail_mean(values, 10),
        "best10": tail_mean(values, 10, highest=True),
        "bottom_decile": bottom_decile(values),
        "top_decile": top_decile(values),
        "jain": jain_index(values),
        "gini": gini(values),
        "by_tier": by_group,
        "tier_gap": spread(by_group),
    }


def difference(a: float | None, b: float | None) -> float | None:
    """``a - b``, or ``None`` where either is missing."""
    return None if a is None or b is None else a - b


def generalisation_gap(participating: Mapping[str, Any], unseen: Mapping[str, Any]) -> dict[str, Any]:
    """pFL-Bench's generalisation gap: participating minus unseen clients' personalised accuracy.

    Both arguments are personalised sections of ``summary.json``: ``mean`` (each
    client's deepest exit), ``adaptive_accuracy``, ``ensemble``, and the ``by_tier`` and
    ``by_exit`` maps; the gap is taken of each (``None`` where either side has no value).
    """
    def keyed(name: str) -> dict[str, float | None]:
        return {k: difference(v, unseen[name].get(k)) for k, v in participating[name].items()}

    return {"mean": difference(participating["mean"], unseen["mean"]), "by_tier": keyed("by_tier"),
            "by_exit": keyed("by_exit"),
            "adaptive_accuracy": difference(participating["adaptive_accuracy"], unseen["adaptive_accuracy"]),
            "ensemble": difference(participating["ensemble"], unseen["ensemble"])}


# ---------------------------------------------------------------------- efficiency


def exit_distribution(
    fractions: Sequence[Sequence[float]], weights: Sequence[float], num_exits: int
) -> dict[str, float | None]:
    """Share of all test samples leaving at exit 1..num_exits.

    ``fractions[c]`` is client c's share per exit it holds (ragged), ``weights[c]`` its
    number of test samples; an exit a client does not hold gets none of its samples.
    """
    return {
        str(i + 1): weighted_average([f[i] if len(f) > i else 0.0 for f in fractions], weights)
        for i in range(num_exits)
    }


def flops_saving(expected: float | None, full: float | None) -> float | None:
    """``1 - expected / full``: the share of compute the exit policy saves."""
    return None if expected is None or not full else 1 - expected / full


def efficiency(
    fractions: Sequence[Sequence[float]],
    expected_flops: Sequence[float],
    full_flops: Sequence[float],
    weights: Sequence[float],
    num_exits: int,
) -> dict[str, Any]:
    """The ``efficiency`` section over clients weighted by their test samples.

    ``expected_flops`` is FLOPs per sample under the exit policy, ``full_flops`` FLOPs per
    sample of the client's whole submodel; the saving compares their per-sample means.
    """
    expected = weighted_average(expected_flops, weights)
    return {
        "exit_distribution": exit_distribution(fractions, weights, num_exits),
        "expected_flops": expected,
        "flops_saving": flops_saving(expected, weighted_average(full_flops, weights)),
    }


# ---------------------------------------------------------------------- stragglers


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
    updates started but not aggregated (late + failed + rejected). ``participation_by_tier``: the
    fraction of a tier's sampled clients whose update was aggregated (``None`` if never
    sampled). ``outcomes_by_tier``: the tiers' sampled clients and outcomes, summed over rounds.
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
    rejected = sum(c.get("rejected", 0) for c in totals.values())
    return {
        "round_time_s": round_time_stats(round_times),
        "late_fraction": late / sampled if sampled else 0.0,
        "dropped_updates": late + failed + rejected,
        "unavailable": sum(c.get("unavailable", 0) for c in totals.values()),
        "participation_by_tier": {t: (c.get("ok", 0) / c["sampled"] if c.get("sampled") else None)
                                  for t, c in totals.items()},
        "wasted_compute_s": float(sum(wasted_compute_s)),
        "outcomes_by_tier": totals,
    }


def energy_summary(by_tier_j: Sequence[Mapping[str, float]], accuracy: float | None) -> dict[str, Any]:
    """Energy over a run from each round's joules per tier, and per point of ``accuracy`` (a fraction).

    ``per_accuracy_point_j``: the total over ``100 x accuracy``, the joules each percentage
    point of the final accuracy cost (``None`` without one, or at 0).
    """
    tiers: dict[str, float] = {}
    for rnd in by_tier_j:
        for tier, joules in rnd.items():
            tiers[tier] = tiers.get(tier, 0.0) + joules
    total = float(sum(tiers.values()))
    return {"total_j": total, "by_tier_j": tiers,
            "per_accuracy_point_j": total / (100 * accuracy) if accuracy else None}


def async_summary(versions: Sequence[Sequence[Mapping[str, Any]]], tiers: Sequence[str]) -> dict[str, Any]:
    """An asynchronous run's updates: who reached the model, and how stale, from each version's client entries.

    An entry with outcome ``ok`` is an update the server aggregated, ``staleness`` versions
    old. ``update_share_by_tier``: each tier's share of those updates (they add up to 1);
    ``mean_staleness_by_tier``: their mean staleness (``None`` for a tier with none).
    """
    staleness: dict[str, list[int]] = {t: [] for t in tiers}
    for entries in versions:
        for entry in entries:
            if entry["outcome"] == "ok":
                staleness[entry["tier"]].append(int(entry["staleness"]))
    total = sum(len(s) for s in staleness.values())
    return {
        "updates": total,
        "update_share_by_tier": {t: len(s) / total if total else None for t, s in staleness.items()},
        "mean_staleness": mean_or_none([s for values in staleness.values() for s in values]),
        "mean_staleness_by_tier": {t: mean_or_none(s) for t, s in staleness.items()},
    }


def time_to_accuracy(points: Sequence[tuple[float, float | None]], target: float) -> float | None:
    """The first virtual time whose accuracy reaches ``target`` (``None`` if never or no target)."""
    if target <= 0:
        return None
    return next((t for t, acc in points if acc is not None and acc >= target), None)
