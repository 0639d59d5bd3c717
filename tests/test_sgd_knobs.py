"""The local optimiser's knobs: learning-rate schedules over rounds, weight decay, gradient-norm clipping."""

import pytest
import torch

from fl_ee.core.config import TrainingConfig
from fl_ee.learning.schedule import round_lr
from fl_ee.learning.training import fit


def test_a_constant_schedule_is_the_configured_lr_in_every_round():
    cfg = TrainingConfig(lr=0.05)
    assert [round_lr(cfg, 30, r) for r in (1, 7, 30)] == [0.05, 0.05, 0.05]


def test_exp_multiplies_by_the_decay_once_per_round_after_the_first():
    cfg = TrainingConfig(lr=0.1, lr_schedule="exp", lr_decay=0.998)  # DepthFL
    assert round_lr(cfg, 1000, 1) == 0.1
    assert round_lr(cfg, 1000, 2) == pytest.approx(0.0998, rel=1e-12)
    assert round_lr(cfg, 1000, 3) == pytest.approx(0.0996004, rel=1e-12)
    assert round_lr(cfg, 1000, 1000) == pytest.approx(0.0135335, rel=1e-5)  # 0.1 x 0.998^999, about 0.1 e^-2


def test_step_decays_in_the_rounds_after_each_milestone():
    cfg = TrainingConfig(lr=0.1, lr_schedule="step", lr_milestones=[100, 200], lr_gamma=0.1)  # ScaleFL
    got = [round_lr(cfg, 300, r) for r in (1, 100, 101, 200, 201, 300)]
    assert got == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-12)


def test_cosine_runs_from_lr_in_the_first_round_to_lr_min_in_the_last():
    cfg = TrainingConfig(lr=0.05, lr_schedule="cosine", lr_min=0.001)  # ReeFL
    # round r of 5: 0.001 + 0.049 (1 + cos(pi (r - 1) / 4)) / 2
    got = [round_lr(cfg, 5, r) for r in (1, 2, 3, 4, 5)]
    assert got == pytest.approx([0.05, 0.0428241161, 0.0255, 0.0081758839, 0.001], rel=1e-8)
    assert round_lr(cfg, 1, 1) == 0.05  # a one-round run trains at lr


def _fit(cfg: TrainingConfig, w0: list[float], loss, epochs: int = 1) -> torch.Tensor:
    """``fit`` of one full batch per epoch over a single tensor starting at ``w0``; its final value."""
    w = torch.tensor(w0, requires_grad=True)
    fit([w], cfg, epochs, 1, torch.Generator().manual_seed(0), lambda idx: loss(w))
    return w.detach()


def test_weight_decay_adds_its_multiple_of_the_weights_to_the_gradient_by_hand():
    half_square = lambda w: 0.5 * (w**2).sum()  # noqa: E731 - gradient w
    # one step: w - lr (g + wd w) = w (1 - 0.1 x 1.5)
    plain = TrainingConfig(lr=0.1, momentum=0.0, weight_decay=0.5)
    assert _fit(plain, [1.0, -2.0], half_square).tolist() == pytest.approx([0.85, -1.7], rel=1e-6)
    # two steps under momentum 0.9: buffer 1.5 w0, then 0.9 x 1.5 w0 + 1.5 x 0.85 w0; w0 (0.85 - 0.1 x 2.625)
    heavy = TrainingConfig(lr=0.1, momentum=0.9, weight_decay=0.5)
    assert _fit(heavy, [1.0, -2.0], half_square, epochs=2).tolist() == pytest.approx([0.5875, -1.175], rel=1e-6)


def _sgd_by_torch(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, steps: int, **sgd) -> torch.Tensor:
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.SGD([w], **sgd)
    for _ in range(steps):
        opt.zero_grad()
        ((x @ w - y) ** 2).mean().backward()
        opt.step()
    return w.detach()


def test_fit_is_torchs_sgd_with_weight_decay_and_without_it_by_default():
    gen = torch.Generator().manual_seed(3)
    x, y, w0 = torch.randn(8, 3, generator=gen), torch.randn(8, generator=gen), torch.randn(3, generator=gen)
    idx_loss = lambda w: ((x @ w - y) ** 2).mean()  # noqa: E731 - one full batch (batch_size 32 > 8)
    decayed = TrainingConfig(lr=0.05, momentum=0.9, weight_decay=0.01)
    assert torch.allclose(_fit(decayed, w0.tolist(), idx_loss, epochs=4),
                          _sgd_by_torch(x, y, w0, 4, lr=0.05, momentum=0.9, weight_decay=0.01), atol=1e-7)
    default = _fit(TrainingConfig(lr=0.05, momentum=0.9), w0.tolist(), idx_loss, epochs=4)
    assert torch.equal(default, _sgd_by_torch(x, y, w0, 4, lr=0.05, momentum=0.9))  # as before the knobs
    assert not torch.allclose(default, _fit(decayed, w0.tolist(), idx_loss, epochs=4), atol=1e-4)


def test_clipping_scales_the_gradient_down_to_clip_norm_over_all_tensors():
    c = torch.tensor([3.0, 4.0])  # the gradient of <c, w>: norm 5
    linear = lambda w: (c * w).sum()  # noqa: E731
    sgd = {"lr": 1.0, "momentum": 0.0}
    assert _fit(TrainingConfig(**sgd, clip_norm=1.0), [0.0, 0.0], linear).tolist() == pytest.approx([-0.6, -0.8])
    assert _fit(TrainingConfig(**sgd, clip_norm=10.0), [0.0, 0.0], linear).tolist() == pytest.approx([-3.0, -4.0])
    assert _fit(TrainingConfig(**sgd), [0.0, 0.0], linear).tolist() == pytest.approx([-3.0, -4.0])  # 0: off
    # two tensors with gradients 3 and 4 share one norm, 5: clipped to 2.5, each is halved
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    fit([a, b], TrainingConfig(**sgd, clip_norm=2.5), 1, 1, torch.Generator(), lambda idx: 3 * a.sum() + 4 * b.sum())
    assert (a.item(), b.item()) == pytest.approx((-1.5, -2.0))
