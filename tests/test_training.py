import math

import pytest
import torch
import torch.nn.functional as F

from fl_ee.core.config import TrainingConfig
from fl_ee.learning.training import (
    EVAL_BATCH,
    accuracy,
    distillation_loss,
    ensemble,
    exit_logits,
    exit_loss,
    for_round,
    head_logits,
    kd_weight_at,
    local_loss,
    mutual_distillation_loss,
    proximal_term,
    stage_features,
    train_exits,
    train_joint,
)
from fl_ee.models import EarlyExitNet, ModelSpec, build_model


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


def _kl_2class(a: float, b: float, temperature: float) -> float:
    """KL(softmax([a, 0]/T) || softmax([b, 0]/T)) for two classes, by hand."""
    def p(z):
        return [math.exp(z / temperature) / (math.exp(z / temperature) + 1), 1 / (math.exp(z / temperature) + 1)]

    return sum(t * math.log(t / s) for t, s in zip(p(a), p(b)))


def test_mutual_distillation_by_hand():
    # exits 1 and 3 agree ([2, 0]); exit 2 disagrees ([0, 2] = [-2, 0] shifted), T = 2
    z = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[2.0, 0.0]])]
    kl = _kl_2class(2.0, -2.0, 2.0)  # KL between the two distinct outputs (symmetric here)
    # ordered pairs (teacher j, student i != j) that disagree: (1,2), (2,1), (2,3), (3,2) -> 4 kl, / (n-1) = 2
    assert mutual_distillation_loss(z, 2.0).item() == pytest.approx(4 * kl * 4 / 2, rel=1e-5)
    # two exits: both directions, divided by 1
    assert mutual_distillation_loss(z[:2], 2.0).item() == pytest.approx(2 * kl * 4, rel=1e-5)


def test_mutual_distillation_teaches_every_exit_through_detached_teachers():
    # two exits, T = 2: d/dz_i [KL(p_j || softmax(z_i/T)) T^2] = T (softmax(z_i/T) - p_j), p_j fixed
    z0 = torch.tensor([[2.0, 0.0]], requires_grad=True)
    z1 = torch.tensor([[0.0, 2.0]], requires_grad=True)
    mutual_distillation_loss([z0, z1], 2.0).backward()
    e = math.e
    p0, p1 = [e / (e + 1), 1 / (e + 1)], [1 / (e + 1), e / (e + 1)]
    torch.testing.assert_close(z0.grad, 2 * torch.tensor([[p0[0] - p1[0], p0[1] - p1[1]]]))
    torch.testing.assert_close(z1.grad, 2 * torch.tensor([[p1[0] - p0[0], p1[1] - p0[1]]]))


def test_exit_loss_mutual_adds_weighted_mutual_term():
    torch.manual_seed(0)
    logits = [torch.randn(5, 3) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 1, 0])
    ce = sum(F.cross_entropy(z, y) for z in logits).item()
    cfg = TrainingConfig(distillation="mutual", kd_weight=0.3, kd_temperature=1.5)
    assert exit_loss(logits, y, cfg).item() == pytest.approx(ce + 0.3 * mutual_distillation_loss(logits, 1.5).item())
    assert exit_loss(logits[:1], y, cfg).item() == pytest.approx(F.cross_entropy(logits[0], y).item())  # one exit


def test_distillation_is_off_before_the_warmup_round():
    cfg = TrainingConfig(kd_weight=0.5, kd_warmup_rounds=3)
    assert [for_round(cfg, r).kd_weight for r in (1, 2, 3, 4)] == [0.0, 0.0, 0.5, 0.5]
    assert for_round(TrainingConfig(kd_weight=0.5), 1).kd_weight == 0.5  # no warm-up by default


def test_the_ramp_is_depthfls_sigmoid_by_hand():
    # R = 4, kd_weight 0.5: r = 0, 1, 2, 3, 4, 5 rounds since round 1 -> 0.5 exp(-5 (1 - min(r, 4)/4)^2)
    cfg = TrainingConfig(kd_weight=0.5, kd_schedule="ramp", kd_ramp_rounds=4)
    expected = [0.5 * math.exp(-5.0), 0.5 * math.exp(-5 * 0.5625), 0.5 * math.exp(-1.25), 0.5 * math.exp(-0.3125),
                0.5, 0.5]
    assert [kd_weight_at(cfg, r) for r in range(1, 7)] == pytest.approx(expected, rel=1e-12)
    assert [for_round(cfg, r).kd_weight for r in (1, 5)] == pytest.approx([0.5 * math.exp(-5.0), 0.5])
    # with a warm-up the ramp starts at its round: off in rounds 1-2, r = 0 in round 3
    warm = cfg.model_copy(update={"kd_warmup_rounds": 3})
    assert [kd_weight_at(warm, r) for r in (1, 2, 3, 7)] == pytest.approx([0.0, 0.0, 0.5 * math.exp(-5.0), 0.5])


def test_exit_weights_weigh_each_exits_cross_entropy():
    torch.manual_seed(0)
    logits = [torch.randn(5, 3) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 1, 0])
    ce = [F.cross_entropy(z, y).item() for z in logits]
    weighted = TrainingConfig(distillation="none", exit_weights=[0.5, 0.0, 2.0])
    assert exit_loss(logits, y, weighted).item() == pytest.approx(0.5 * ce[0] + 2.0 * ce[2], rel=1e-6)
    # a client of depth 2 uses the first two weights; distillation is added unweighted
    kd = TrainingConfig(distillation="last-exit", kd_weight=0.3, kd_temperature=2.0, exit_weights=[0.5, 2.0, 1.0])
    distil = distillation_loss(logits[:1], logits[1], 2.0).item()
    assert exit_loss(logits[:2], y, kd).item() == pytest.approx(0.5 * ce[0] + 2.0 * ce[1] + 0.3 * distil, rel=1e-6)


def test_ensemble_averages_the_exits_softmax():
    # two exits, one sample: softmax [e/(e+1), 1/(e+1)] and [1/(1+e^3), e^3/(1+e^3)]
    z = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])]
    e = math.e
    p0 = (e / (e + 1) + 1 / (1 + e**3)) / 2
    torch.testing.assert_close(ensemble(z), torch.tensor([[p0, 1 - p0]]))
    assert accuracy(ensemble(z), torch.tensor([1])) == 1.0  # the confident exit carries the vote


def test_proximal_term_by_hand():
    w = [torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([[3.0]], requires_grad=True)]
    anchors = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    term = proximal_term(w, anchors, mu=0.5)
    assert term.item() == pytest.approx(0.25 * (1 + 4 + 4))  # mu/2 * (1^2 + 2^2 + 2^2)
    term.backward()  # gradient mu * (w - anchor)
    torch.testing.assert_close(w[0].grad, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(w[1].grad, torch.tensor([[1.0]]))


def test_proximal_term_keeps_the_shared_step_near_the_received_weights():
    x, y = _toy()

    def drift(mu: float) -> float:
        torch.manual_seed(0)
        model = EarlyExitNet(ModelSpec(1, 8, 8, 3), depth=2)
        start = [p.detach().clone() for p in model.parameters()]
        train_joint(model, x, y, TrainingConfig(local_epochs=4, prox_mu=mu), torch.Generator().manual_seed(1))
        return proximal_term(model.parameters(), start, 2.0).item()  # ||w - w0||^2

    assert drift(10.0) < 0.5 * drift(0.0)


def test_local_loss_is_the_objective_over_all_local_data():
    torch.manual_seed(0)
    x, y = _toy(n=40)
    model = EarlyExitNet(ModelSpec(1, 8, 8, 3), depth=3)
    cfg = TrainingConfig(distillation="mutual")
    with torch.no_grad():
        expected = exit_loss(model.eval()(x), y, cfg).item()
    assert local_loss(model, x, y, cfg) == pytest.approx(expected, rel=1e-5)


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
    model = EarlyExitNet(ModelSpec(1, 8, 8, 3), depth=2)
    cfg = TrainingConfig(local_epochs=8, batch_size=16, lr=0.05)
    before = [F.cross_entropy(z, y).item() for z in exit_logits(model, x)]
    train_joint(model, x, y, cfg, torch.Generator().manual_seed(1))
    after = [F.cross_entropy(z, y).item() for z in exit_logits(model, x)]
    assert all(a < b for a, b in zip(after, before))
    assert accuracy(exit_logits(model, x)[-1], y) > 0.8


def test_exit_training_leaves_the_backbone_untouched():
    torch.manual_seed(0)
    x, y = _toy()
    model = EarlyExitNet(ModelSpec(1, 8, 8, 3), depth=3)
    backbone = {k: v.clone() for k, v in model.stages.state_dict().items()}
    heads = torch.nn.ModuleList([torch.nn.Sequential(*h) for h in model.exits])  # separate copies
    heads.load_state_dict(model.exits.state_dict())
    start = {k: v.clone() for k, v in heads.state_dict().items()}
    train_exits(heads, stage_features(model, x), y, TrainingConfig(), 2, torch.Generator().manual_seed(0))
    for k, v in model.stages.state_dict().items():
        torch.testing.assert_close(v, backbone[k])
    assert any(not torch.equal(v, start[k]) for k, v in heads.state_dict().items())


def test_accuracy():
    assert accuracy(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


@pytest.mark.e2e
@pytest.mark.parametrize("spec", [ModelSpec(1, 8, 8, 3, width=2),
                                  ModelSpec(1, 8, 8, 3, width=2, backbone="resnet", layers=(1, 1), norm="batch"),
                                  ModelSpec(1, 8, 8, 3, width=8, backbone="mobilenet_v2")],
                         ids=["cnn", "resnet", "mobilenet_v2"])
def test_exit_logits_are_the_heads_over_the_stage_features_bit_for_bit(spec):
    torch.manual_seed(0)
    model = build_model(spec)
    x = torch.randn(EVAL_BATCH + 40, 1, 8, 8)  # a full evaluation batch and a short one
    heads = torch.nn.ModuleList(build_model(spec).exits)
    for given in (None, heads):
        logits = exit_logits(model, x, given)
        expected = head_logits(model.exits if given is None else given, stage_features(model, x))
        assert len(logits) == len(expected) == len(spec.exits)
        assert all(torch.equal(a, b) for a, b in zip(logits, expected))
    assert not model.training and not heads.training
    assert [tuple(z.shape) for z in exit_logits(model, x[:0])] == [(0, 3)] * len(spec.exits)
