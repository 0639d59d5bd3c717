"""``summary.json``, assembled in one place, and the personalised accuracy of every evaluation round.

Glue from the clients' latest :class:`~fl_ee.wire.protocol.EvaluateReply` and the rounds'
clock records to the pure functions of :mod:`fl_ee.core.metrics`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fl_ee.core.config import Config
from fl_ee.core.metrics import (
    async_summary,
    efficiency,
    energy_summary,
    exit_means,
    fairness,
    generalisation_gap,
    group_means,
    mean_or_none,
    straggler_summary,
    time_to_accuracy,
)
from fl_ee.deployment.deploy import calibration_summary, deployed, deployment_summary, policy_table
from fl_ee.models import ModelSpec, submodel_flops, submodel_params
from fl_ee.wire.protocol import EvaluateReply
from strategies import ClientInfo


@dataclass(frozen=True)
class Evaluation:
    """A client's latest evaluation and the round it happened in."""

    round: int
    reply: EvaluateReply


Results = Mapping[int, Evaluation]  # client id -> its latest evaluation


def _evaluated(clients: Sequence[ClientInfo], results: Results) -> tuple[list[ClientInfo], list[EvaluateReply]]:
    evaluated = [c for c in clients if c.client_id in results]
    return evaluated, [results[c.client_id].reply for c in evaluated]


def personalised_summary(
    clients: Sequence[ClientInfo], results: Results, tiers: Sequence[str], max_depth: int
) -> dict[str, Any]:
    """Personalised accuracy of the evaluated clients.

    The mean at each client's deepest exit (overall and by tier), by exit (overall and by
    tier), the exits' ensemble (overall and by tier), and adaptive accuracy (overall and by
    tier) under the exit policy.
    """
    evaluated, replies = _evaluated(clients, results)
    deepest = [r.exit_accuracy[-1] for r in replies]
    groups = [c.tier for c in evaluated]
    adaptive = [r.adaptive_accuracy for r in replies]
    ensembles = [(r.ensemble_accuracy, c.tier) for c, r in zip(evaluated, replies) if r.ensemble_accuracy is not None]
    return {
        "mean": mean_or_none(deepest),
        "by_tier": group_means(deepest, groups, tiers),
        "by_exit": exit_means([r.exit_accuracy for r in replies], max_depth),
        "adaptive_accuracy": mean_or_none(adaptive),
        "expected_flops": mean_or_none([r.expected_flops for r in replies]),
        "evaluated_clients": len(evaluated),
        "by_tier_exit": {t: exit_means([r.exit_accuracy for r, g in zip(replies, groups) if g == t], max_depth)
                         for t in tiers},
        "adaptive_by_tier": group_means(adaptive, groups, tiers),
        "ensemble": mean_or_none([e for e, _ in ensembles]),
        "ensemble_by_tier": group_means([e for e, _ in ensembles], [t for _, t in ensembles], tiers),
    }


def _efficiency(replies: Sequence[EvaluateReply], max_depth: int) -> dict[str, Any]:
    return efficiency([r.exit_fractions for r in replies], [r.expected_flops for r in replies],
                      [r.full_flops for r in replies], [r.num_examples for r in replies], max_depth)


def with_deployed_thresholds(cfg: Config, clients: Sequence[ClientInfo], results: Results) -> dict[int, Evaluation]:
    """``results`` with each client's adaptive figures at the thresholds of the configured policy, rule and scope.

    Idempotent: the thresholds come from the curves, which stay as the client sent them.
    """
    evaluated, replies = _evaluated(clients, results)
    if not replies:
        return dict(results)
    now = deployed(cfg, [c.tier for c in evaluated], replies)
    return {**results, **{c.client_id: Evaluation(results[c.client_id].round, r) for c, r in zip(evaluated, now)}}


def submodel_summary(cfg: Config, spec: ModelSpec) -> dict[str, dict[str, Any]]:
    """Each tier's submodel of the network ``spec``: depth, width, one sample's forward FLOPs, parameters."""
    return {t.name: {"depth": t.depth, "width": t.width,
                     "flops": float(submodel_flops(spec, None, t.width).exit_costs()[t.depth - 1]),
                     "params": submodel_params(spec, t.depth, t.width)} for t in cfg.tiers}


def build_summary(
    cfg: Config,
    clients: Sequence[ClientInfo],
    results: Results,
    global_eval: Mapping[str, Any],
    clocks: Sequence[Mapping[str, Any]],
    accuracy_at: Sequence[tuple[float, float | None]],
    config_warnings: Sequence[str] = (),
    unseen: Collection[int] = (),
    submodels: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``summary.json``: the run's final figures.

    Every figure but ``clients`` is over the clients that take part in training; the
    ``unseen`` ones (client ids, ``data.unseen_fraction``) get a section of their own
    (:func:`unseen_summary`), present only where there are some.
    ``results`` holds each client's latest evaluation, ``global_eval`` the global
    model's last evaluation (``by_exit`` and ``ensemble``), ``clocks`` every round's clock
    record, and ``accuracy_at`` the (virtual time, personalised mean) of every evaluation
    round; the results' adaptive figures are those :func:`with_deployed_thresholds` set
    (the server sets them each round). ``warnings`` holds ``config_warnings`` (what in the
    config cannot take effect, :func:`fl_ee.federation.preflight.config_warnings`), then the
    run's (:func:`run_warnings`). ``submodels`` is each tier's :func:`submodel_summary`.
    """
    tiers, depth = [t.name for t in cfg.tiers], cfg.max_depth
    participating = [c for c in clients if c.client_id not in unseen]
    evaluated, replies = _evaluated(participating, results)
    by_tier = {t: [r for c, r in zip(evaluated, replies) if c.tier == t] for t in tiers}
    groups = [c.tier for c in evaluated]
    table = policy_table(cfg, groups, replies)
    personalised = personalised_summary(participating, results, tiers, depth)
    summary = {
        "accuracy": {
            "personalised": personalised,
            "global": dict(global_eval),
        },
        "fairness": fairness([r.exit_accuracy[-1] for r in replies], [c.tier for c in evaluated], tiers),
        "efficiency": {
            **_efficiency(replies, depth),
            "by_tier": {t: _efficiency(members, depth) if members else None for t, members in by_tier.items()},
        },
        "policies": table,
        "deployment": deployment_summary(cfg, groups, replies, table),
        "calibration": calibration_summary(cfg, groups, replies),
        "clients": {"total": len(clients), "by_tier": {t: sum(c.tier == t for c in clients) for t in tiers}},
        "submodels": dict(submodels or {}),
        "rounds": cfg.rounds,
        "seed": cfg.seed,
        "virtual_time_s": clocks[-1]["virtual_time_s"] if clocks else 0.0,
        "time_to_accuracy_s": time_to_accuracy(accuracy_at, cfg.simulation.target_accuracy),
        "stragglers": straggler_summary([c["by_tier"] for c in clocks], [c["round_time_s"] for c in clocks],
                                        [c["wasted_compute_s"] for c in clocks]),
        "energy": energy_summary([c["energy_by_tier_j"] for c in clocks], personalised["mean"]),
        "warnings": [*config_warnings, *run_warnings(clocks, global_eval)],
    }
    if cfg.simulation.mode == "async":
        summary["async"] = async_summary([c["clients"] for c in clocks], tiers)
    if unseen:
        summary["unseen"] = unseen_summary([c for c in clients if c.client_id in unseen], results, tiers, depth,
                                           personalised)
    return summary


def unseen_summary(unseen: Sequence[ClientInfo], results: Results, tiers: Sequence[str], max_depth: int,
                   participating: Mapping[str, Any]) -> dict[str, Any]:
    """The ``unseen`` section: the unseen clients, their personalised accuracy and fairness, and the gap.

    ``participating`` is the participating clients' :func:`personalised_summary`; ``gap`` is
    pFL-Bench's generalisation gap, participating minus unseen.
    """
    evaluated, replies = _evaluated(unseen, results)
    personalised = personalised_summary(unseen, results, tiers, max_depth)
    return {
        "client_ids": [c.client_id for c in unseen],
        "clients": {"total": len(unseen), "by_tier": {t: sum(c.tier == t for c in unseen) for t in tiers}},
        "personalised": personalised,
        "fairness": fairness([r.exit_accuracy[-1] for r in replies], [c.tier for c in evaluated], tiers),
        "gap": generalisation_gap(participating, personalised),
    }


def _spans(rounds: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` as ``1-3, 7``."""
    spans: list[list[int]] = []
    for r in rounds:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def run_warnings(clocks: Sequence[Mapping[str, Any]], global_eval: Mapping[str, Any] | None = None) -> list[str]:
    """What makes a finished run degenerate.

    Rounds (or the whole run) in which no client's update counted, and global exits that
    collapsed to one class (:func:`collapse_warnings`, for the last ``global_eval``).
    """
    idle = [i + 1 for i, c in enumerate(clocks) if not sum(t.get("ok", 0) for t in c["by_tier"].values())]
    if clocks and len(idle) == len(clocks):
        return [f"no client trained in any of the {len(clocks)} rounds: the global model kept its initial weights, "
                "so this run is not a result (look at the tiers' availability and the straggler policy)"]
    collapsed = collapse_warnings(global_eval or {})
    if idle:
        return [f"no client trained in {len(idle)} of {len(clocks)} rounds (round {_spans(idle)}): "
                "the global model did not move in them", *collapsed]
    return collapsed


COLLAPSED = 0.99  # an exit that gives this share of the test images one class has collapsed


def collapse_warnings(global_eval: Mapping[str, Any]) -> list[str]:
    """Global exits that give (nearly) every test image one class: their accuracy is a constant's, not a model's."""
    return [f"global exit {k} gives one class to {share:.0%} of the test images: it has collapsed, so its accuracy "
            f"({global_eval['by_exit'][k]:.1%}) is that of a constant (the units before it died, or it was never "
            "trained; see 'A collapsed exit' in the measured results)"
            for k, share in global_eval.get("modal_share", {}).items() if share >= COLLAPSED]
