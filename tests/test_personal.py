"""Personalisation modes (fl_ee/learning/personal.py): hidden labels, self-distillation, fine-tuning."""

import pytest
import torch
import torch.nn.functional as F

from fl_ee.core.config import TrainingConfig, config_from_dict
from fl_ee.learning.algorithm import LocalTraining
from fl_ee.learning.personal import UNLABELLED, SelfDistill, finetuned, hide_labels, train_self_distill
from fl_ee.learning.training import distillation_loss
from fl_ee.models import EarlyExitNet, ModelSpec


def _toy(n=48, classes=3):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.1
    for k in range(classes):
        x[y == k, 0, 2 * k : 2 * k + 2, :] += 1.0
    return x, y


def test_hide_labels_keeps_a_seeded_share_per_client():
    y = torch.arange(10)
    kept = hide_labels(y, 0.3, seed=0, client_id=4)
    known = kept != UNLABELLED
    assert int(known.sum()) == 3 and torch.equal(kept[known], y[known])  # round(0.3 * 10) keep their own label
    assert torch.equal(hide_labels(y, 0.3, 0, 4), kept)  # the same samples every round
    assert not torch.equal(hide_labels(y, 0.3, 0, 5), kept)  # another client, another subset
    assert torch.equal(hide_labels(y, 1.0, 0, 4), y) and bool((hide_labels(y, 0.0, 0, 4) == UNLABELLED).all())


def _self_distill_heads(labels: torch.Tensor, fraction: float) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    x, _ = _toy()
    model = EarlyExitNet(ModelSpec(1, 8, 8, 3), depth=3)
    heads = torch.nn.ModuleList(EarlyExitNet(ModelSpec(1, 8, 8, 3), depth=3).exits)
    cfg = config_from_dict({"personalisation": {"mode": "self-distill", "labelled_fraction": fraction, "epochs": 2}})
    local = LocalTraining(model, x, labels, 1, 0, torch.Generator().manual_seed(1), cfg.training, False, {}, cfg)
    SelfDistill(cfg).personal_step(local, heads)
    return heads.state_dict()


def test_self_distill_without_labels_never_reads_one():
    _, y = _toy()
    garbage = torch.randint(0, 3, y.shape, generator=torch.Generator().manual_seed(9))
    honest, scrambled = _self_distill_heads(y, 0.0), _self_distill_heads(garbage, 0.0)
    assert all(torch.equal(honest[k], scrambled[k]) for k in honest)  # bit for bit: the labels play no part
    with_labels = _self_distill_heads(y, 1.0), _self_distill_heads(garbage, 1.0)
    assert any(not torch.equal(with_labels[0][k], with_labels[1][k]) for k in honest)  # ... unless they are kept


def test_self_distill_loss_is_kd_on_every_sample_plus_ce_on_the_labelled_by_hand():
    torch.manual_seed(0)
    features = [torch.randn(4, 5)]
    head = torch.nn.Linear(5, 3)
    teacher = torch.randn(4, 3)
    targets = torch.tensor([2, UNLABELLED, 0, UNLABELLED])
    cfg = TrainingConfig(kd_weight=0.7, kd_temperature=2.0, batch_size=4, lr=1e-9, momentum=0.0)
    with torch.no_grad():
        z = head(features[0])
        expected = 0.7 * distillation_loss([z], teacher, 2.0) + F.cross_entropy(z[[0, 2]], torch.tensor([2, 0]))
    loss = train_self_distill(torch.nn.ModuleList([head]), features, teacher, targets, cfg, 1,
                              torch.Generator().manual_seed(0))
    assert loss == pytest.approx(expected.item(), rel=1e-5)  # one batch of all four samples, before the step


def test_finetuned_trains_a_copy_and_leaves_the_received_model_alone():
    torch.manual_seed(0)
    x, y = _toy()
    model = EarlyExitNet(ModelSpec(1, 8, 8, 3), depth=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = finetuned(model, x, y, TrainingConfig(prox_mu=1.0), 2, torch.Generator().manual_seed(0))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in tuned.state_dict().items())
