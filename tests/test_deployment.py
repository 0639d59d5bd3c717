"""Thresholds per scope and the summary's policy figures, on hand-made curves."""

import pytest
import torch

from fl_ee.core.config import config_from_dict
from fl_ee.deployment.deploy import curves_of, deployed, grids, policy_figures, policy_table, thresholds_by_scope
from fl_ee.deployment.policies import POLICIES
from fl_ee.wire.protocol import EvaluateReply

CFG = config_from_dict({
    "exit_policy": {"name": "max-prob", "thresholds": "accuracy", "max_drop": 0.01},
    "tiers": [{"name": "small", "share": 0.5, "depth": 2, "compute_gflops": 1.0, "training_w": 2.0},
              {"name": "big", "share": 0.5, "depth": 2, "compute_gflops": 2.0, "training_w": 6.0}],
})
G = {p: len(g) for p, g in grids(CFG.exit_policy, CFG.max_depth).items()}


def curve_reply(cfg, cid, n, exits, full, *, calib, test, calib_examples=10, adaptive=0.0, expected=0.0,
                fractions=None, ensemble=None) -> EvaluateReply:
    """A reply whose every policy has the curves ``calib(i)`` and ``test(i)``: (accuracy, FLOPs) at grid index i."""
    sizes = {p: len(g) for p, g in grids(cfg.exit_policy, cfg.max_depth).items()}

    def flat(point):
        return tuple(v for p in POLICIES for v in [*(point(i)[0] for i in range(sizes[p])),
                                                     *(point(i)[1] for i in range(sizes[p]))])

    fractions = fractions or (1.0,) + (0.0,) * (len(exits) - 1)
    depth, bins = len(exits), 2 * 10 * 3
    return EvaluateReply(
        client_id=cid, num_examples=n, accuracy=exits[-1], exit_accuracy=exits, adaptive_accuracy=adaptive,
        expected_flops=expected, exit_fractions=fractions, full_flops=full,
        exit_flops=tuple(full * (i + 1) / depth for i in range(depth)), calib_examples=calib_examples,
        calib_accuracy=0.9, calib_curves=flat(calib), test_curves=flat(test),
        fraction_curve=fractions * sizes[cfg.exit_policy.name], temperatures=(1.0,) * depth, ece=(0.1,) * depth,
        ece_calibrated=(0.05,) * depth, reliability=(0.0,) * bins, overthinking=0.0,
        ensemble_accuracy=ensemble)


def stepped(k):
    """Calibration accuracy 0.5 below index k, 0.9 from it (the deepest exit scores 0.9); FLOPs grow with the index."""
    return lambda i: (0.9 if i >= k else 0.5, 100.0 * (i + 1))


def indexed(i):
    return i / 100, 10.0 * i


REPLIES = [curve_reply(CFG, 0, 10, (0.8, 0.9), 1000.0, calib=stepped(3), test=indexed),
           curve_reply(CFG, 1, 30, (0.7, 0.6), 1000.0, calib=stepped(5), test=indexed),
           curve_reply(CFG, 2, 20, (0.5, 0.5), 1000.0, calib=stepped(7), test=indexed)]
TIERS = ["small", "small", "big"]


def test_personal_tier_and_global_thresholds():
    choice = ("max-prob", "accuracy")
    # personal: each client's own step; tier: the pooled curve reaches 0.89 where both members do
    assert thresholds_by_scope(CFG, TIERS, REPLIES, (*choice, "personal")) == [3, 5, 7]
    assert thresholds_by_scope(CFG, TIERS, REPLIES, (*choice, "tier")) == [5, 5, 7]
    assert thresholds_by_scope(CFG, TIERS, REPLIES, (*choice, "global")) == [7, 7, 7]
    fixed = grids(CFG.exit_policy, CFG.max_depth)["max-prob"].index(0.5)
    assert thresholds_by_scope(CFG, TIERS, REPLIES, ("max-prob", "fixed", "tier")) == [fixed] * 3
    # budget 0.5 of 1000 FLOPs: points 0..4 fit; the most accurate is the first 0.9 (client 0), else the cheapest
    assert thresholds_by_scope(CFG, TIERS, REPLIES, ("max-prob", "budget", "personal")) == [3, 0, 0]


def test_deployed_replies_read_the_test_curve_at_the_chosen_index():
    cfg = CFG.model_copy(update={"exit_policy": CFG.exit_policy.model_copy(update={"scope": "tier"})})
    now = deployed(cfg, TIERS, REPLIES)
    assert [r.adaptive_accuracy for r in now] == [0.05, 0.05, 0.07]
    assert [r.expected_flops for r in now] == [50.0, 50.0, 70.0]
    assert deployed(cfg, TIERS, now) == now  # idempotent


def test_the_policy_table_by_hand():
    table = policy_table(CFG, TIERS, REPLIES)
    # deepest: mean of 0.9, 0.6, 0.5; FLOPs 1000 for all; latency over test samples 10, 30 at 1 GFLOPs, 20 at 2
    assert table["deepest"]["accuracy"] == pytest.approx(2 / 3)
    assert table["deepest"]["latency_ms"] == pytest.approx((40 * 1e-3 + 20 * 0.5e-3) / 60)
    assert table["deepest"]["energy_mj"] == pytest.approx((40 * 1e-3 * 2.0 + 20 * 0.5e-3 * 6.0) / 60)  # W x ms
    rows = {(r["policy"], r["thresholds"], r["scope"]): r for r in table["rows"]}
    assert len(rows) == len(POLICIES) * 7
    tier = rows[("max-prob", "accuracy", "tier")]  # indices 5, 5, 7
    assert tier["accuracy"] == pytest.approx(0.17 / 3) and tier["drop"] == pytest.approx(2 / 3 - 0.17 / 3)
    assert tier["expected_flops"] == pytest.approx((40 * 50 + 20 * 70) / 60)
    assert tier["flops_saving"] == pytest.approx(1 - (40 * 50 + 20 * 70) / 60 / 1000)
    assert tier["by_tier"]["big"]["accuracy"] == pytest.approx(0.07)
    assert tier["latency_ms"] == pytest.approx((40 * 50 / 1e6 + 20 * 70 / 2e6) / 60)
    assert tier["by_tier"]["big"]["energy_mj"] == pytest.approx(70 / 2e6 * 6.0)


def test_a_clients_figures_from_its_logits():
    # two exits, two classes; exit 1 is sure of class 0 on every sample, exit 2 is right on all
    y = torch.tensor([0, 1, 0, 1])
    exit1 = torch.tensor([[4.0, 0.0]] * 4)
    exit2 = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    cfg = config_from_dict({"exit_policy": {"name": "max-prob", "thresholds": "fixed", "threshold": 0.5},
                            "tiers": [{"name": "t", "share": 1.0, "depth": 2}]})
    f = policy_figures([exit1, exit2], y, [exit1, exit2], y, [10.0, 30.0], cfg.exit_policy, cfg.max_depth)
    assert f.adaptive.accuracy == 0.5 and f.adaptive.expected_flops == 10.0  # all leave at exit 1
    assert f.calib_examples == 4 and f.calib_accuracy == 1.0 and f.overthinking == 0.0
    curves = curves_of(f.test_curves, grids(cfg.exit_policy, cfg.max_depth))
    assert curves["max-prob"][0][-1] == 1.0 and curves["max-prob"][1][-1] == 30.0  # threshold 1: nobody leaves early
    assert curves["patience"] == ([0.5, 1.0], [10.0, 30.0])  # patience 1: all leave at exit 1; 2: all reach exit 2
    # exit 1 is right on half: its temperature flattens it to 1/2 per class, so calibrated max-prob never exits at >0.5
    assert f.temperatures[0] == pytest.approx(100.0)
    assert len(f.fraction_curve) == 2 * len(grids(cfg.exit_policy, cfg.max_depth)["max-prob"])
