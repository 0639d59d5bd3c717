"""The ``accuracy.personalised``, ``fairness``, ``efficiency`` and ``exit_sweep`` sections of ``summary.json``.

Glue from the clients' latest evaluate replies (``exit-accuracy``, ``exit-fractions``,
``expected-flops``, ``full-flops``, ``sweep-*``, ``num-examples``) to :mod:`fl_ee.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fl_ee.metrics import efficiency, exit_means, fairness, group_means, mean_or_none, weighted_mean
from fl_ee.policies import SWEEP_THRESHOLDS
from strategies import ClientInfo

Results = Mapping[int, Mapping[str, Any]]  # client id -> its latest evaluate metrics


def personalised_summary(
    clients: Sequence[ClientInfo], results: Results, tiers: Sequence[str], max_depth: int
) -> dict[str, Any]:
    """Mean accuracy at each client's deepest exit, overall, by tier and by exit."""
    evaluated = [c for c in clients if c.client_id in results]
    deepest = [results[c.client_id]["exit-accuracy"][-1] for c in evaluated]
    return {
        "mean": mean_or_none(deepest),
        "by_tier": group_means(deepest, [c.tier for c in evaluated], tiers),
        "by_exit": exit_means([results[c.client_id]["exit-accuracy"] for c in evaluated], max_depth),
        "adaptive_accuracy": mean_or_none([results[c.client_id]["adaptive-accuracy"] for c in evaluated]),
        "expected_flops": mean_or_none([results[c.client_id]["expected-flops"] for c in evaluated]),
        "evaluated_clients": len(evaluated),
    }


def tier_sweep(members: Sequence[Mapping[str, Any]]) -> dict[str, list[float]] | None:
    """A tier's adaptive accuracy (mean over clients) and FLOPs per sample at each sweep threshold."""
    if not members:
        return None
    weights, columns = [m["num-examples"] for m in members], range(len(SWEEP_THRESHOLDS))
    return {
        "adaptive_accuracy": [mean_or_none([m["sweep-accuracy"][j] for m in members]) for j in columns],
        "expected_flops": [weighted_mean([m["sweep-flops"][j] for m in members], weights) for j in columns],
    }


def outcome_sections(
    clients: Sequence[ClientInfo], results: Results, tiers: Sequence[str], max_depth: int
) -> dict[str, Any]:
    """``fairness`` over each evaluated client's deepest-exit accuracy, ``efficiency`` over
    its test samples, and ``exit_sweep``: accuracy vs. FLOPs per tier across thresholds."""
    evaluated = [c for c in clients if c.client_id in results]
    res = [results[c.client_id] for c in evaluated]
    return {
        "fairness": fairness([r["exit-accuracy"][-1] for r in res], [c.tier for c in evaluated], tiers),
        "efficiency": efficiency(
            [r["exit-fractions"] for r in res],
            [r["expected-flops"] for r in res],
            [r["full-flops"] for r in res],
            [r["num-examples"] for r in res],
            max_depth,
        ),
        "exit_sweep": {
            "thresholds": list(SWEEP_THRESHOLDS),
            "by_tier": {t: tier_sweep([r for c, r in zip(evaluated, res) if c.tier == t]) for t in tiers},
        },
    }
