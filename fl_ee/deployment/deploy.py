"""Deployment of the exits: every policy's curves on a client, thresholds per scope, and the summary's figures.

On the client, :func:`policy_figures` runs every exit policy over its threshold grid on
the calibration split and on the test split (the curves travel in the
:class:`~fl_ee.wire.protocol.EvaluateReply`: a few hundred floats), fits the temperatures,
and measures calibration and overthinking. On the server, :func:`thresholds_by_scope`
picks each client's grid index for every policy, rule and scope (``personal`` from its
own calibration curve, ``tier``/``global`` from the curves pooled over the tier's / all
clients by calibration samples), and each client's test figures at that index are read
off its test curve. The three deployment modes of ``summary.json`` follow: *subnet*
(each exit alone), *anytime* (the configured policy) and *budgeted* (the curves and
their Pareto front).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fl_ee.core.config import Config, ExitPolicyConfig
from fl_ee.core.metrics import exit_distribution, exit_means, flops_saving, mean_or_none, weighted_average
from fl_ee.deployment.calibration import bins_ece, ece, exit_bins, fit_temperatures, pooled_bins, scaled
from fl_ee.deployment.policies import (
    POLICIES,
    AdaptiveResult,
    ExitOutputs,
    exit_outputs,
    output_sweep,
    overthinking,
    policy_grid,
)
from fl_ee.deployment.thresholds import RULES, Curve, pareto_front, pooled, select
from fl_ee.wire.protocol import EvaluateReply, PolicyReport

SCOPES = ("personal", "tier", "global")
Choice = tuple[str, str, str]  # (policy, rule, scope)


def grids(policy: ExitPolicyConfig, max_depth: int) -> dict[str, tuple[float, ...]]:
    """Every policy's threshold grid in this run."""
    return {p: policy_grid(p, policy.threshold, policy.patience, max_depth) for p in POLICIES}


def fixed_index(policy: ExitPolicyConfig, name: str, grid: Sequence[float]) -> int:
    """Where the configured threshold (patience for ``patience``) sits on ``name``'s grid."""
    return grid.index(float(policy.patience) if name == "patience" else policy.threshold)


# ------------------------------------------------------------------------------ client


@dataclass(frozen=True)
class PolicyFigures(PolicyReport):
    """What a client measures about exit policies: the reply's fields (:class:`PolicyReport`) and ``adaptive``.

    ``adaptive``: the configured policy and rule at the client's own (personal)
    threshold.
    """

    adaptive: AdaptiveResult

    def wire(self) -> dict[str, Any]:
        """The reply fields: everything but ``adaptive``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "adaptive"}


def _sweep(raw: ExitOutputs, calibrated: ExitOutputs, y: torch.Tensor, costs: Sequence[float],
           all_grids: Mapping[str, Sequence[float]]) -> dict[str, list[AdaptiveResult]]:
    """Every policy over its grid on one split: ``calibrated`` reads the temperature-scaled exits, the rest ``raw``."""
    return {p: output_sweep(calibrated if p == "calibrated" else raw, y, costs, p, grid)
            for p, grid in all_grids.items()}


def _flat(sweep: Mapping[str, Sequence[AdaptiveResult]]) -> tuple[float, ...]:
    return tuple(v for results in sweep.values()
                 for v in [*(r.accuracy for r in results), *(r.expected_flops for r in results)])


def policy_figures(calib_logits: Sequence[torch.Tensor], calib_y: torch.Tensor, logits: Sequence[torch.Tensor],
                   y: torch.Tensor, costs: Sequence[float], policy: ExitPolicyConfig, max_depth: int) -> PolicyFigures:
    """A client's exit-policy figures from its exits' logits on its calibration and test samples.

    Each split's exits are turned into probabilities and predictions once, before and
    after temperature scaling, and every policy, the ECE and the reliability bins read those.
    """
    temperatures = fit_temperatures(calib_logits, calib_y)
    all_grids = grids(policy, max_depth)
    raw, calibrated = exit_outputs(logits), exit_outputs(scaled(logits, temperatures))
    calib = _sweep(exit_outputs(calib_logits), exit_outputs(scaled(calib_logits, temperatures)), calib_y, costs,
                   all_grids)
    test = _sweep(raw, calibrated, y, costs, all_grids)
    calib_accuracy = float((calib_logits[-1].argmax(dim=1) == calib_y).double().mean()) if len(calib_y) else 0.0
    mine = Curve(tuple(r.accuracy for r in calib[policy.name]),
                 tuple(r.expected_flops / costs[-1] for r in calib[policy.name]), calib_accuracy)
    chosen = select(mine, policy.thresholds, fixed=fixed_index(policy, policy.name, all_grids[policy.name]),
                    budget=policy.flops_budget, max_drop=policy.max_drop)
    before, after = exit_bins(raw.probs, y), exit_bins(calibrated.probs, y)
    return PolicyFigures(
        adaptive=test[policy.name][chosen],
        exit_flops=tuple(float(c) for c in costs),
        calib_examples=len(calib_y),
        calib_accuracy=calib_accuracy,
        calib_curves=_flat(calib),
        test_curves=_flat(test),
        fraction_curve=tuple(f for r in test[policy.name] for f in r.exit_fractions),
        temperatures=temperatures,
        ece=bins_ece(before),
        ece_calibrated=bins_ece(after),
        reliability=tuple(torch.cat([pooled_bins(before).flatten(), pooled_bins(after).flatten()]).tolist()),
        overthinking=overthinking(logits, y),
    )


# ------------------------------------------------------------------------------ server


def curves_of(flat: Sequence[float],
              all_grids: Mapping[str, Sequence[float]]) -> dict[str, tuple[list[float], list[float]]]:
    """A reply's flat curves back as (accuracy, FLOPs per sample) per policy."""
    out, at = {}, 0
    for p, grid in all_grids.items():
        n = len(grid)
        out[p] = (list(flat[at:at + n]), list(flat[at + n:at + 2 * n]))
        at += 2 * n
    return out


def _calibration_curve(reply: EvaluateReply, name: str, all_grids: Mapping[str, Sequence[float]]) -> Curve:
    accuracy, flops = curves_of(reply.calib_curves, all_grids)[name]
    return Curve(tuple(accuracy), tuple(f / reply.full_flops for f in flops), reply.calib_accuracy)


def thresholds_by_scope(cfg: Config, tiers: Sequence[str], replies: Sequence[EvaluateReply],
                        choice: Choice) -> list[int]:
    """Each client's grid index under ``choice``; ``tiers[c]`` is client c's tier."""
    name, rule, scope = choice
    policy, all_grids = cfg.exit_policy, grids(cfg.exit_policy, cfg.max_depth)
    curves = [_calibration_curve(r, name, all_grids) for r in replies]
    weights = [r.calib_examples for r in replies]

    def pick(curve: Curve) -> int:
        return select(curve, rule, fixed=fixed_index(policy, name, all_grids[name]),
                      budget=policy.flops_budget, max_drop=policy.max_drop)

    if scope == "personal":
        return [pick(c) for c in curves]
    groups = tiers if scope == "tier" else ["all"] * len(replies)
    chosen = {g: pick(pooled([c for c, h in zip(curves, groups) if h == g],
                             [w for w, h in zip(weights, groups) if h == g])) for g in set(groups)}
    return [chosen[g] for g in groups]


def deployed(cfg: Config, tiers: Sequence[str], replies: Sequence[EvaluateReply]) -> list[EvaluateReply]:
    """The replies with their adaptive figures at the configured policy, rule and scope's thresholds."""
    policy = cfg.exit_policy
    all_grids = grids(policy, cfg.max_depth)
    indices = thresholds_by_scope(cfg, tiers, replies, (policy.name, policy.thresholds, policy.scope))
    out = []
    for r, i in zip(replies, indices):
        accuracy, flops = curves_of(r.test_curves, all_grids)[policy.name]
        depth = len(r.exit_accuracy)
        out.append(dataclasses.replace(r, adaptive_accuracy=accuracy[i], expected_flops=flops[i],
                                       exit_fractions=r.fraction_curve[i * depth:(i + 1) * depth]))
    return out


def _latency_ms(flops: float, gflops: float) -> float:
    return 1e3 * flops / (gflops * 1e9)


def _figures(replies: Sequence[EvaluateReply], accuracy: Sequence[float], flops: Sequence[float],
             gflops: Sequence[float], watts: Sequence[float]) -> dict[str, float | None]:
    """Accuracy (mean over clients), FLOPs, latency and energy per sample (over test samples) of one deployment.

    A sample's energy is its latency on the client's device at the device's power under load
    (its tier's ``training_w``): W x ms = mJ.
    """
    weights = [r.num_examples for r in replies]
    expected = weighted_average(flops, weights)
    latency = [_latency_ms(f, g) for f, g in zip(flops, gflops)]
    return {
        "accuracy": mean_or_none(accuracy),
        "expected_flops": expected,
        "flops_saving": flops_saving(expected, weighted_average([r.full_flops for r in replies], weights)),
        "latency_ms": weighted_average(latency, weights),
        "energy_mj": weighted_average([ms * w for ms, w in zip(latency, watts)], weights),
    }


def _by_tier(tiers: Sequence[str], order: Sequence[str], figures: Any) -> dict[str, Any]:
    """``figures(members)`` for each tier's client indices (``None`` for a tier without clients)."""
    members = {t: [i for i, h in enumerate(tiers) if h == t] for t in order}
    return {t: figures(m) if m else None for t, m in members.items()}


def policy_table(cfg: Config, tiers: Sequence[str], replies: Sequence[EvaluateReply]) -> dict[str, Any]:
    """The ``policies`` section: the deepest exit, then every policy x rule x scope (``fixed`` once), and per tier."""
    order, all_grids = [t.name for t in cfg.tiers], grids(cfg.exit_policy, cfg.max_depth)
    by_name = {t.name: t for t in cfg.tiers}
    speed, watts = [by_name[t].compute_gflops for t in tiers], [by_name[t].training_w for t in tiers]

    def figures(indices: Sequence[int], accuracy: Sequence[float], flops: Sequence[float]) -> dict[str, Any]:
        return _figures([replies[i] for i in indices], [accuracy[i] for i in indices], [flops[i] for i in indices],
                        [speed[i] for i in indices], [watts[i] for i in indices])

    def entry(accuracy: list[float], flops: list[float]) -> dict[str, Any]:
        everyone = range(len(replies))
        return {**figures(everyone, accuracy, flops),
                "by_tier": _by_tier(tiers, order, lambda m: figures(m, accuracy, flops))}

    deepest = entry([r.exit_accuracy[-1] for r in replies], [r.full_flops for r in replies])
    rows = []
    for name in POLICIES:
        test = [curves_of(r.test_curves, all_grids)[name] for r in replies]
        for rule in RULES:
            for scope in (("global",) if rule == "fixed" else SCOPES):
                picked = thresholds_by_scope(cfg, tiers, replies, (name, rule, scope))
                row = entry([t[0][i] for t, i in zip(test, picked)], [t[1][i] for t, i in zip(test, picked)])
                drop = None if row["accuracy"] is None else deepest["accuracy"] - row["accuracy"]
                rows.append({"policy": name, "thresholds": rule, "scope": "-" if rule == "fixed" else scope,
                             **row, "drop": drop})
    return {"deepest": deepest, "rows": rows}


def _pooled_bins(replies: Sequence[EvaluateReply], after: bool) -> torch.Tensor:
    """The reliability bins of ``replies`` summed (before or after temperature scaling)."""
    total = torch.zeros(len(replies[0].reliability) // 6 if replies else 1, 3, dtype=torch.float64)
    for r in replies:
        bins = torch.tensor(r.reliability, dtype=torch.float64).view(2, -1, 3)
        total += bins[int(after)]
    return total


def calibration_summary(cfg: Config, tiers: Sequence[str], replies: Sequence[EvaluateReply]) -> dict[str, Any]:
    """The ``calibration`` section.

    ECE pooled over test samples and per exit (mean over clients) before and after
    temperature scaling, the reliability bins, the mean temperature per exit, and
    overthinking (over test samples).
    """
    order, depth = [t.name for t in cfg.tiers], cfg.max_depth
    weights = [r.num_examples for r in replies]

    def diagnostics(members: Sequence[int]) -> dict[str, Any]:
        chosen = [replies[i] for i in members]
        return {
            "ece": ece(_pooled_bins(chosen, after=False)),
            "ece_calibrated": ece(_pooled_bins(chosen, after=True)),
            "overthinking": weighted_average([r.overthinking for r in chosen], [weights[i] for i in members]),
        }

    everyone = list(range(len(replies)))
    return {
        **(diagnostics(everyone) if replies else {"ece": None, "ece_calibrated": None, "overthinking": None}),
        "ece_by_exit": exit_means([r.ece for r in replies], depth),
        "ece_calibrated_by_exit": exit_means([r.ece_calibrated for r in replies], depth),
        "temperature_by_exit": exit_means([r.temperatures for r in replies], depth),
        "reliability": {"before": _pooled_bins(replies, after=False).tolist() if replies else None,
                        "after": _pooled_bins(replies, after=True).tolist() if replies else None},
        "by_tier": _by_tier(tiers, order, diagnostics),
    }


def deployment_summary(cfg: Config, tiers: Sequence[str], replies: Sequence[EvaluateReply],
                       table: Mapping[str, Any]) -> dict[str, Any]:
    """The ``deployment`` section: subnet (each exit alone), anytime (the configured policy), budgeted (curves)."""
    order, depth, policy = [t.name for t in cfg.tiers], cfg.max_depth, cfg.exit_policy
    all_grids = grids(policy, depth)

    def subnet(members: Sequence[int]) -> dict[str, Any]:
        chosen = [replies[i] for i in members]
        accuracy = exit_means([r.exit_accuracy for r in chosen], depth)
        flops = exit_means([r.exit_flops for r in chosen], depth)
        return {str(i + 1): {"accuracy": accuracy[str(i + 1)], "flops": flops[str(i + 1)]} for i in range(depth)}

    def budgeted(members: Sequence[int]) -> dict[str, Any]:
        chosen = [replies[i] for i in members]
        weights = [r.num_examples for r in chosen]
        curves: dict[str, dict[str, list[Any]]] = {}
        for name, grid in all_grids.items():
            test = [curves_of(r.test_curves, all_grids)[name] for r in chosen]
            curves[name] = {"thresholds": list(grid),
                            "accuracy": [mean_or_none([t[0][j] for t in test]) for j in range(len(grid))],
                            "expected_flops": [weighted_average([t[1][j] for t in test], weights)
                                               for j in range(len(grid))]}
        points = [(name, j) for name, grid in all_grids.items() for j in range(len(grid))]
        front = pareto_front([curves[n]["accuracy"][j] for n, j in points],
                             [curves[n]["expected_flops"][j] for n, j in points])
        return {"curves": curves, "pareto": [list(points[i]) for i in front]}

    configured = next(r for r in table["rows"] if r["policy"] == policy.name and r["thresholds"] == policy.thresholds
                      and r["scope"] in (policy.scope, "-"))
    everyone = list(range(len(replies)))
    return {
        "subnet": {"by_exit": subnet(everyone), "by_tier": _by_tier(tiers, order, subnet)},
        "anytime": {"policy": policy.name, "thresholds": policy.thresholds, "scope": policy.scope,
                    **{k: v for k, v in configured.items() if k not in ("policy", "thresholds", "scope")},
                    "exit_distribution": exit_distribution([r.exit_fractions for r in replies],
                                                           [r.num_examples for r in replies], depth)},
        "budgeted": {"by_tier": _by_tier(tiers, order, budgeted)},
    }
