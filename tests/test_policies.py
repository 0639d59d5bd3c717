import math

import pytest
import torch

from fl_ee.deployment.policies import (
    CONFIDENCE_GRID,
    adaptive_sweep,
    exit_choice,
    exit_choices,
    exit_scores,
    overthinking,
    policy_grid,
)


def confident(logits, policy, threshold):
    """Whether the single row of ``logits`` may leave at the first of two exits."""
    return exit_choice([logits, logits], policy, threshold).item() == 0


def test_entropy_and_max_prob_thresholds():
    sure, unsure = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    assert confident(sure, "entropy", 0.1) and not confident(unsure, "entropy", 0.99)
    assert confident(unsure, "entropy", 1.0)  # normalised entropy of uniform is exactly 1
    p = 1 / (1 + math.exp(-1.0))
    logits = torch.tensor([[1.0, 0.0]])
    assert confident(logits, "max-prob", p - 1e-6) and not confident(logits, "max-prob", p + 1e-6)
    assert exit_scores([logits], "calibrated").item() == pytest.approx(p)


def test_samples_leave_at_the_first_confident_exit_and_the_last_takes_the_rest():
    sure, unsure = [10.0, 0.0], [0.0, 0.0]
    exit1 = torch.tensor([sure, unsure, unsure])
    exit2 = torch.tensor([unsure, sure, unsure])
    exit3 = torch.tensor([unsure, unsure, unsure])
    assert exit_choice([exit1, exit2, exit3], "entropy", 0.5).tolist() == [0, 1, 2]


def test_a_sweep_scores_each_threshold_on_its_own():
    sure0, sure1, unsure = [10.0, 0.0], [0.0, 10.0], [0.0, 0.0]
    exit1 = torch.tensor([sure0, unsure, unsure])
    exit2 = torch.tensor([unsure, sure1, unsure])
    exit3 = torch.tensor([unsure, unsure, unsure])  # predicts class 0 for everyone
    sweep = adaptive_sweep([exit1, exit2, exit3], torch.tensor([0, 1, 1]), [1.0, 2.0, 4.0], "entropy",
                           [0.0, 0.5, 1.0])
    # 0.0: everyone at the last exit; 0.5: each at its confident exit; 1.0: everyone at the first
    assert [r.exit_fractions for r in sweep] == [(0.0, 0.0, 1.0), (1 / 3, 1 / 3, 1 / 3), (1.0, 0.0, 0.0)]
    assert [r.expected_flops for r in sweep] == [4.0, 7 / 3, 1.0]
    assert [r.accuracy for r in sweep] == [1 / 3, 2 / 3, 1 / 3]


def test_adaptive_inference_by_hand():
    sure0, sure1, unsure = [10.0, 0.0], [0.0, 10.0], [0.0, 0.0]
    exit1 = torch.tensor([sure0, sure0, unsure, unsure])  # samples 0, 1 leave here
    exit2 = torch.tensor([unsure, unsure, sure1, [0.0, 0.1]])  # the rest leave at the last exit
    y = torch.tensor([0, 1, 1, 0])
    [result] = adaptive_sweep([exit1, exit2], y, exit_costs=[100.0, 300.0], policy="entropy", thresholds=[0.5])
    # predictions: 0 (right), 0 (wrong), 1 (right), 1 (wrong)
    assert result.accuracy == pytest.approx(0.5)
    assert result.expected_flops == pytest.approx((100 + 100 + 300 + 300) / 4)
    assert result.exit_fractions == (0.5, 0.5)


def test_patience_leaves_once_that_many_consecutive_exits_agree():
    # predicted classes per exit (rows) for 4 samples (columns)
    predictions = torch.tensor([[0, 1, 2, 0],
                                [0, 2, 2, 1],
                                [0, 2, 1, 0],
                                [1, 2, 1, 1]])
    logits = [torch.nn.functional.one_hot(p, 3).float() for p in predictions]
    assert exit_scores(logits, "patience").tolist() == [[1, 1, 1, 1], [2, 1, 2, 1], [3, 2, 1, 1], [1, 3, 2, 1]]
    assert exit_choice(logits, "patience", 1.0).tolist() == [0, 0, 0, 0]  # one exit always agrees with itself
    # 2: sample 0 at exit 2 (exits 1-2 agree), 1 at exit 3 (2-3), 2 at exit 2 (1-2), 3 never: the last exit
    assert exit_choice(logits, "patience", 2.0).tolist() == [1, 2, 1, 3]
    assert exit_choice(logits, "patience", 3.0).tolist() == [2, 3, 3, 3]
    sweep = adaptive_sweep(logits, torch.tensor([0, 2, 2, 1]), [1.0, 2.0, 3.0, 4.0], "patience", [1.0, 2.0])
    assert [r.accuracy for r in sweep] == [0.5, 1.0] and [r.expected_flops for r in sweep] == [1.0, 2.75]


def test_overthinking_counts_samples_right_earlier_but_wrong_at_the_deepest():
    right, wrong = [5.0, 0.0], [0.0, 5.0]
    exit1 = torch.tensor([right, right, wrong, wrong])
    exit2 = torch.tensor([wrong, right, right, wrong])
    exit3 = torch.tensor([wrong, right, wrong, wrong])
    # sample 0: right at 1, wrong at 3; 1: right at 3; 2: right at 2, wrong at 3; 3: never right
    assert overthinking([exit1, exit2, exit3], torch.zeros(4, dtype=torch.long)) == pytest.approx(0.5)


def test_the_grid_holds_the_configured_threshold_and_patience_counts_exits():
    assert 0.42 in policy_grid("entropy", 0.42, 2, 4) and policy_grid("max-prob", 0.5, 2, 4) == CONFIDENCE_GRID
    assert policy_grid("patience", 0.5, 2, 3) == (1.0, 2.0, 3.0)


def test_each_sample_leaves_at_the_first_exit_whose_score_passes_each_threshold():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(4, 50, generator=g, dtype=torch.float64)
    thresholds = [0.0, 0.3, 0.7, 1.0]
    for policy, passes in (("entropy", lambda s, t: s <= t), ("max-prob", lambda s, t: s >= t)):
        expected = [[next((i for i in range(3) if passes(float(scores[i, j]), t)), 3) for j in range(50)]
                    for t in thresholds]
        assert exit_choices(scores, policy, thresholds).tolist() == expected
    streaks = torch.tensor([[1, 1, 1], [2, 1, 2], [3, 1, 1]])  # patience: agreeing exits so far
    assert exit_choices(streaks, "patience", [1.0, 2.0, 3.0]).tolist() == [[0, 0, 0], [1, 2, 1], [2, 2, 2]]
