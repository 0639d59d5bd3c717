"""Fairness and efficiency metrics against hand-computed values."""

import pytest

from fl_ee.core.metrics import (
    bottom_decile,
    difference,
    efficiency,
    exit_distribution,
    fairness,
    flops_saving,
    generalisation_gap,
    gini,
    jain_index,
    population_std,
    spread,
    tail_mean,
    top_decile,
    weighted_average,
)


def test_fairness_by_hand_with_ties():
    values = [0.2, 0.4, 0.4, 1.0]
    f = fairness(values, ["iot", "phone", "phone", "laptop"], ["iot", "phone", "laptop"])
    assert f["mean"] == pytest.approx(0.5)
    assert f["std"] == pytest.approx(0.3)  # squared deviations .09 .01 .01 .25 -> .36 / 4
    assert f["min"] == 0.2
    assert f["worst10"] == 0.2 and f["best10"] == 1.0  # ceil(0.4) = 1 client each
    assert f["bottom_decile"] == 0.2 and f["top_decile"] == 1.0  # sorted[4 // 10 = 0], sorted[36 // 10 = 3]
    assert f["jain"] == pytest.approx(25 / 34)  # 2^2 / (4 * 1.36)
    assert f["gini"] == pytest.approx(0.3)  # sum_ij |xi - xj| = 4.8; / (2 * 16 * 0.5)
    assert f["by_tier"] == pytest.approx({"iot": 0.2, "phone": 0.4, "laptop": 1.0})
    assert f["tier_gap"] == pytest.approx(0.8)
    assert list(f) == ["mean", "std", "min", "worst10", "best10", "bottom_decile", "top_decile", "jain", "gini",
                       "by_tier", "tier_gap"]


def test_a_single_client_is_perfectly_fair():
    f = fairness([0.7], ["phone"], ["iot", "phone"])
    assert f == {
        "mean": 0.7, "std": 0.0, "min": 0.7, "worst10": 0.7, "best10": 0.7, "bottom_decile": 0.7, "top_decile": 0.7,
        "jain": 1.0, "gini": 0.0,
        "by_tier": {"iot": None, "phone": 0.7}, "tier_gap": 0.0,
    }


def test_tiers_without_evaluated_clients_are_none_and_ignored_by_the_gap():
    f = fairness([0.5, 0.7, 0.9], ["a", "a", "c"], ["a", "b", "c"])
    assert f["by_tier"] == pytest.approx({"a": 0.6, "b": None, "c": 0.9})
    assert f["tier_gap"] == pytest.approx(0.3)
    assert spread({"a": None, "b": None}) is None


def test_no_evaluated_client_gives_nones():
    f = fairness([], [], ["a"])
    assert f["by_tier"] == {"a": None}
    assert all(f[k] is None for k in f if k != "by_tier")


def test_deciles_are_pfl_bench_order_statistics_not_tail_means():
    ten = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0]  # ascending: 0.0, 0.1, ..., 0.9
    assert bottom_decile(ten) == 0.1  # sorted[10 // 10 = 1]: the second worst, not the worst
    assert top_decile(ten) == 0.9  # sorted[90 // 10 = 9]: the best
    assert tail_mean(ten) == 0.0 and tail_mean(ten, highest=True) == 0.9  # q-FFL's: the lowest / highest one
    twenty = [i / 20 for i in range(20)]  # 0.00, 0.05, ..., 0.95
    assert bottom_decile(twenty) == 0.10 and top_decile(twenty) == 0.90  # sorted[2], sorted[18]
    nine = [0.5, 0.2, 0.9, 0.4, 0.1, 0.8, 0.3, 0.6, 0.7]
    assert bottom_decile(nine) == 0.1 and top_decile(nine) == 0.9  # sorted[0], sorted[81 // 10 = 8]
    assert bottom_decile([]) is None and top_decile([]) is None


def test_the_generalisation_gap_is_participating_minus_unseen():
    participating = {"mean": 0.8, "by_tier": {"iot": 0.7, "phone": 0.9}, "by_exit": {"1": 0.6, "2": 0.8},
                     "adaptive_accuracy": 0.75, "ensemble": None}
    unseen = {"mean": 0.5, "by_tier": {"iot": 0.6, "phone": None}, "by_exit": {"1": 0.65, "2": 0.5},
              "adaptive_accuracy": 0.5, "ensemble": 0.5}
    gap = generalisation_gap(participating, unseen)
    assert list(gap) == ["mean", "by_tier", "by_exit", "adaptive_accuracy", "ensemble"]
    assert gap["mean"] == pytest.approx(0.3) and gap["adaptive_accuracy"] == 0.25 and gap["ensemble"] is None
    assert gap["by_tier"] == pytest.approx({"iot": 0.1, "phone": None})
    assert gap["by_exit"] == pytest.approx({"1": -0.05, "2": 0.3})
    assert difference(0.5, None) is None and difference(None, 0.5) is None and difference(0.75, 0.5) == 0.25


def test_tail_mean_takes_ceil_ten_percent_with_ties():
    eleven = [0.1, 0.1, 0.1] + [0.5] * 6 + [0.9, 0.8]
    assert tail_mean(eleven) == pytest.approx(0.1)  # ceil(1.1) = 2 lowest: a tie, 0.1 and 0.1
    assert tail_mean(eleven, highest=True) == pytest.approx(0.85)  # 0.9 and 0.8
    thirty = [float(i) for i in range(30)]
    assert tail_mean(thirty) == pytest.approx(1.0)  # exactly 3 clients (0, 1, 2), not 4
    assert tail_mean(thirty, highest=True) == pytest.approx(28.0)
    assert tail_mean([]) is None


def test_jain_and_gini_extremes():
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)  # one client has everything: 1/n
    assert jain_index([0.0, 0.0]) == 1.0 and gini([0.0, 0.0]) == 0.0  # all equal
    assert gini([0.0, 1.0]) == pytest.approx(0.5)
    assert gini([0.0, 0.0, 0.0, 1.0]) == pytest.approx(0.75)  # (n - 1) / n
    assert jain_index([]) is None and gini([]) is None and population_std([]) is None


def test_efficiency_weights_clients_by_test_samples():
    # client A: exits 1-2, 4 test samples; client B: exits 1-3, 12 test samples
    e = efficiency(
        fractions=[[0.75, 0.25], [0.5, 0.0, 0.5]],
        expected_flops=[150.0, 250.0],
        full_flops=[300.0, 400.0],
        weights=[4, 12],
        num_exits=4,
    )
    assert e["exit_distribution"] == pytest.approx({"1": 9 / 16, "2": 1 / 16, "3": 6 / 16, "4": 0.0})
    assert e["expected_flops"] == pytest.approx(225.0)  # (4 * 150 + 12 * 250) / 16
    assert e["flops_saving"] == pytest.approx(0.4)  # 1 - 225 / 375
    assert sum(e["exit_distribution"].values()) == pytest.approx(1.0)


def test_efficiency_of_no_client_is_none():
    e = efficiency([], [], [], [], 2)
    assert e == {"exit_distribution": {"1": None, "2": None}, "expected_flops": None, "flops_saving": None}
    assert exit_distribution([[1.0]], [0], 1) == {"1": None}
    assert flops_saving(None, 10.0) is None and flops_saving(5.0, 0.0) is None
    assert weighted_average([1.0, 3.0], [1, 3]) == pytest.approx(2.5)
