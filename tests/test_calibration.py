import math

import pytest
import torch

from fl_ee.deployment.calibration import MAX_TEMPERATURE, ece, exit_ece, fit_temperature, reliability_bins


def test_temperature_fit_meets_the_closed_form():
    # logits (2, 0) for every sample, three in four labelled 0: the NLL is least where
    # sigmoid(2 / T) = 3/4, i.e. T = 2 / log(3)
    logits = torch.tensor([[2.0, 0.0]] * 4)
    y = torch.tensor([0, 0, 0, 1])
    assert fit_temperature(logits, y) == pytest.approx(2 / math.log(3), rel=1e-9)


def test_temperature_fit_bounds_and_no_samples():
    assert fit_temperature(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])) == MAX_TEMPERATURE
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0


def test_ece_on_a_hand_made_set():
    # top-class probabilities 0.95, 0.95, 0.65, 0.65 (two classes): bins 9 and 6
    z95, z65 = math.log(0.95 / 0.05), math.log(0.65 / 0.35)
    logits = torch.tensor([[z95, 0.0], [z95, 0.0], [z65, 0.0], [z65, 0.0]])
    y = torch.tensor([0, 1, 0, 0])  # bin 9: one of two right; bin 6: both right
    bins = reliability_bins([logits], y)
    assert bins[9].tolist() == pytest.approx([2, 1, 1.9]) and bins[6].tolist() == pytest.approx([2, 2, 1.3])
    assert bins.sum(dim=0).tolist() == pytest.approx([4, 3, 3.2])
    # (|1 - 1.9| + |2 - 1.3|) / 4
    assert ece(bins) == pytest.approx(0.4)
    assert exit_ece([logits, logits], y) == pytest.approx((0.4, 0.4))
    assert ece(torch.zeros(10, 3)) is None
