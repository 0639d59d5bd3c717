import math

import pytest
import torch

from fl_ee.deployment.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    ece,
    exit_ece,
    fit_temperature,
    reliability_bins,
)


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


def test_temperature_fit_steps_exactly_as_the_plain_bisection_on_the_reference_derivative():
    # the fast derivative decides only far from 0, so every bisection step, and T, is the reference's to the bit
    def reference(logits, y):
        z = logits.double()
        true = z.gather(1, y[:, None]).squeeze(1)

        def slope(beta):
            return float(((torch.softmax(beta * z, dim=1) * z).sum(dim=1) - true).mean())

        low, high = 1 / MAX_TEMPERATURE, 1 / MIN_TEMPERATURE
        if slope(low) >= 0:
            return MAX_TEMPERATURE
        if slope(high) <= 0:
            return MIN_TEMPERATURE
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if slope(mid) < 0 else (low, mid)
        return 1 / ((low + high) / 2)

    g = torch.Generator().manual_seed(0)
    for n, k, sharp in [(1, 2, 0.0), (7, 3, 1.0), (60, 10, 3.0), (200, 100, 6.0), (33, 10, 40.0)]:
        y = torch.randint(0, k, (n,), generator=g)
        logits = torch.randn(n, k, generator=g) + sharp * torch.nn.functional.one_hot(y, k)
        for z in (logits, logits.round()):  # rounded: ties between classes
            assert fit_temperature(z, y) == reference(z, y)
