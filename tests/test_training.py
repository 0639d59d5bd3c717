import math

import pytest
import torch
import torch.nn.functional as F

from fl_ee.config import TrainingConfig
from fl_ee.models import EarlyExitCNN, ModelSpec
from fl_ee.training import accuracy, distillation_loss, exit_logits, exit_loss, train_exits, train_joint


def test_distillation_loss_by_hand():
    # one sample, two classes, T = 2: KL(p_t || p_s) * T^2 with p = softmax(z / T)
    teacher, student = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    pt = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]
    ps = pt[::-1]
    kl = sum(t * math.log(t / s) for t, s in zip(pt, ps))
    assert distillation_loss([student], teacher, 2.0).item() == pytest.approx(kl * 4, rel=1e-5)
    assert distillation_loss([teacher.clone()], teacher, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    # two students add up
    assert distillation_loss([student, student], teacher, 2.0).item() == pytest.approx(2 * kl * 4, rel=1e-5)


def test_exit_loss_is_ce_sum_plus_weighted_last_exit_distillation():
    torch.manual_seed(0)
    logits = [torch.randn(5, 3, requires_grad=True) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 1, 0])
    ce = sum(F.cross_entropy(z, y) for z in logits)
    none = exit_loss(logits, y, TrainingConfig(distillation="none"))
    assert none.item() == pytest.approx(ce.item())
    cfg = TrainingConfig(distillation="last-exit", kd_weight=0.3, kd_temperature=2.0)
    kd = distillation_loss(logits[:2], logits[2].detach(), 2.0)
    assert exit_loss(logits, y, cfg).item() == pytest.approx(ce.item() + 0.3 * kd.item())


def test_the_deepest_exit_only_teaches():
    # gradient reaching the last exit comes from its own cross-entropy alone
    torch.manual_seed(0)
    logits = [torch.randn(4, 3, requires_grad=True) for _ in range(2)]
    y = torch.tensor([0, 1, 2, 0])
    exit_loss(logits, y, TrainingConfig(kd_weight=5.0)).backward()
    alone = logits[1].detach().clone().requires_grad_(True)
    F.cross_entropy(alone, y).backward()
    torch.testing.assert_close(logits[1].grad, alone.grad)


def _toy(n=64, classes=3):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.1
    for k in range(classes):  # a learnable signal: class k lights rows 2k and 2k+1
        x[y == k, 0, 2 * k : 2 * k + 2, :] += 1.0
    return x, y


def test_joint_training_lowers_the_loss_of_every_exit():
    torch.manual_seed(0)
    x, y = _toy()
    model = EarlyExitCNN(ModelSpec(1, 8, 8, 3), depth=2)
    cfg = TrainingConfig(local_epochs=8, batch_size=16, lr=0.05)
    before = [F.cross_entropy(z, y).item() for z in exit_logits(model, x)]
    train_joint(model, x, y, cfg, torch.Generator().manual_seed(1))
    after = [F.cross_entropy(z, y).item() for z in exit_logits(model, x)]
    assert all(a < b for a, b in zip(after, before))
    assert accuracy(exit_logits(model, x)[-1], y) > 0.8


def test_exit_training_leaves_the_backbone_untouched():
    torch.manual_seed(0)
    x, y = _toy()
    model = EarlyExitCNN(ModelSpec(1, 8, 8, 3), depth=3)
    backbone = {k: v.clone() for k, v in model.stages.state_dict().items()}
    heads = torch.nn.ModuleList([torch.nn.Sequential(*h) for h in model.exits])  # separate copies
    heads.load_state_dict(model.exits.state_dict())
    start = {k: v.clone() for k, v in heads.state_dict().items()}
    train_exits(model, heads, x, y, TrainingConfig(), epochs=2, generator=torch.Generator().manual_seed(0))
    for k, v in model.stages.state_dict().items():
        torch.testing.assert_close(v, backbone[k])
    assert any(not torch.equal(v, start[k]) for k, v in heads.state_dict().items())


def test_accuracy():
    assert accuracy(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
