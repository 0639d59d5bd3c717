import math

import pytest
import torch

from fl_ee.policies import adaptive_inference, confident, exit_choice


def test_entropy_and_max_prob_thresholds():
    sure, unsure = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    assert confident(sure, "entropy", 0.1).item() and not confident(unsure, "entropy", 0.99).item()
    assert confident(unsure, "entropy", 1.0).item()  # normalised entropy of uniform is exactly 1
    p = 1 / (1 + math.exp(-1.0))
    logits = torch.tensor([[1.0, 0.0]])
    assert confident(logits, "max-prob", p - 1e-6).item() and not confident(logits, "max-prob", p + 1e-6).item()


def test_samples_leave_at_the_first_confident_exit_and_the_last_takes_the_rest():
    sure, unsure = [10.0, 0.0], [0.0, 0.0]
    exit1 = torch.tensor([sure, unsure, unsure])
    exit2 = torch.tensor([unsure, sure, unsure])
    exit3 = torch.tensor([unsure, unsure, unsure])
    assert exit_choice([exit1, exit2, exit3], "entropy", 0.5).tolist() == [0, 1, 2]


def test_adaptive_inference_by_hand():
    sure0, sure1, unsure = [10.0, 0.0], [0.0, 10.0], [0.0, 0.0]
    exit1 = torch.tensor([sure0, sure0, unsure, unsure])  # samples 0, 1 leave here
    exit2 = torch.tensor([unsure, unsure, sure1, [0.0, 0.1]])  # the rest leave at the last exit
    y = torch.tensor([0, 1, 1, 0])
    result = adaptive_inference([exit1, exit2], y, exit_costs=[100.0, 300.0], policy="entropy", threshold=0.5)
    # predictions: 0 (right), 0 (wrong), 1 (right), 1 (wrong)
    assert result.accuracy == pytest.approx(0.5)
    assert result.expected_flops == pytest.approx((100 + 100 + 300 + 300) / 4)
    assert result.exit_fractions == (0.5, 0.5)
