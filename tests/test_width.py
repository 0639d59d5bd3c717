"""Width-scaled submodels: slicing, element-wise aggregation, FjORD's ordered dropout, and the shipped strategies."""

import math

import numpy as np
import pytest
import torch

from fl_ee.core.config import config_from_dict, config_to_json, load_config
from fl_ee.core.seeding import Stream, rng
from fl_ee.federation.plan import make_plan
from fl_ee.federation.preflight import preflight
from fl_ee.learning.widths import OrderedDropout, ordered_dropout_loss
from fl_ee.models import (
    ModelSpec,
    build_model,
    narrow_state,
    scaled,
    submodel_flops,
    submodel_params,
    submodel_shapes,
    width_forward,
)
from fl_ee.models.norm import StaticBatchNorm
from fl_ee.models.width import ScaledConv2d
from fl_ee.wire.protocol import ARRAYS, Instructions, TrainReply, instructions_of, reply
from inprocess import run_inprocess
from strategies import ClientInfo, FjORD, HeteroFL, QFedAvg, build_strategy, network_spec
from strategies.aggregation import region_aggregate, weighted_mean
from strategies.base import to_numpy, to_record
from strategies.qfedavg import qffl_aggregate

CNN = ModelSpec(1, 8, 8, 10, width=4)  # conv channels 4, 8, 16, 16; mlp heads of 128 hidden units
BACKBONES = [ModelSpec(1, 8, 8, 3, width=4), ModelSpec(1, 8, 8, 3, width=4, backbone="resnet", layers=(1, 1)),
             ModelSpec(3, 8, 8, 3, width=8, backbone="mobilenet_v2", norm="batch")]
WIDTHS = (0.25, 0.3, 0.5, 0.75, 1.0)


def test_scaled_is_the_ceiling_of_ratio_times_channels():
    assert [scaled(16, r) for r in WIDTHS] == [4, 5, 8, 12, 16]
    assert scaled(10, 0.3) == 3 and scaled(3, 0.1) == 1  # 0.3 x 10 is 3 despite float rounding; never 0


# ------------------------------------------------------------------------------ slicing


def test_a_half_width_submodel_keeps_the_first_half_of_every_layer_but_the_image_and_the_classes():
    full, half = submodel_shapes(CNN, 4, 1.0), submodel_shapes(CNN, 4, 0.5)
    assert set(half) == set(full)
    assert full["stages.0.0.weight"] == (4, 1, 3, 3) and half["stages.0.0.weight"] == (2, 1, 3, 3)  # image whole
    assert half["stages.0.1.weight"] == (2,)  # GroupNorm's affine weight
    assert full["stages.1.0.weight"] == (8, 4, 3, 3) and half["stages.1.0.weight"] == (4, 2, 3, 3)
    assert full["exits.0.2.weight"] == (128, 16) and half["exits.0.2.weight"] == (64, 8)  # 2x2 pooled x 2 channels
    assert half["exits.0.4.weight"] == (10, 64) and half["exits.0.4.bias"] == (10,)  # every class kept
    model = build_model(CNN, 2, 0.5)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == submodel_shapes(CNN, 2, 0.5)


@pytest.mark.e2e
@pytest.mark.parametrize("spec", BACKBONES, ids=["cnn", "resnet", "mobilenet_v2"])
def test_a_sliced_submodel_of_every_backbone_runs_on_the_corners_of_the_full_state(spec):
    full = build_model(spec).state_dict()
    for width in (0.3, 0.5):
        for depth in (1, spec.num_exits):
            shapes = submodel_shapes(spec, depth, width)
            sub = build_model(spec, depth, width)
            state = sub.state_dict()
            assert {k: tuple(v.shape) for k, v in state.items()} == shapes
            assert all(len(s) == full[k].dim() and all(a <= b for a, b in zip(s, full[k].shape))
                       for k, s in shapes.items())
            sub.load_state_dict(narrow_state(full, shapes))
            for key, shape in shapes.items():
                torch.testing.assert_close(sub.state_dict()[key], full[key][tuple(slice(0, n) for n in shape)])
            sub.eval()
            outs = sub(torch.randn(2, spec.in_channels, 8, 8))
            assert [o.shape for o in outs] == [torch.Size([2, 3])] * depth and all(o.isfinite().all() for o in outs)
    first = next(k for k in full if k.endswith("weight") and full[k].dim() == 4)
    assert submodel_shapes(spec, 1, 0.5)[first][1] == spec.in_channels  # the image's channels stay whole


@pytest.mark.e2e
@pytest.mark.parametrize("spec", BACKBONES, ids=["cnn", "resnet", "mobilenet_v2"])
def test_group_norm_groups_divide_the_channels_at_every_width(spec):
    spec = ModelSpec(**{**spec.__dict__, "norm": "group"})
    for width in WIDTHS:
        model = build_model(spec, None, width)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert norms and all(m.num_channels % m.num_groups == 0 for m in norms)
        assert all(m.num_groups == math.gcd(4, m.num_channels) for m in norms)
    odd = build_model(spec, None, 0.3)  # odd channel counts, in training
    assert all(o.isfinite().all() for o in odd(torch.randn(2, spec.in_channels, 8, 8)))
    groups = {w: build_model(CNN, 1, w).stages[0][1].num_groups for w in (0.25, 0.3, 0.5, 1.0)}  # of 4 channels
    assert groups == {0.25: 1, 0.3: 2, 0.5: 2, 1.0: 4}  # 1, 2, 2, 4 channels


def test_half_width_flops_are_a_quarter_for_every_convolution_but_the_image_ones_half():
    spec = ModelSpec(1, 8, 8, 10, width=16, exit_head="mlp")
    conv = lambda hw, cin, cout: 2 * hw * cin * cout * 9  # noqa: E731
    mlp = lambda c, hidden: 2 * (4 * c * hidden + hidden * 10)  # noqa: E731
    full, half = submodel_flops(spec), submodel_flops(spec, None, 0.5)
    assert half.stages == (conv(64, 1, 8), conv(16, 8, 16), conv(4, 16, 32), conv(1, 32, 32))
    assert half.exits == (mlp(8, 64), mlp(16, 64), mlp(32, 64), mlp(32, 64))
    assert [h / f for h, f in zip(half.stages, full.stages)] == [0.5, 0.25, 0.25, 0.25]
    assert submodel_params(spec, 1, 0.5) == (8 * 9 + 8) + 2 * 8 + (4 * 8 * 64 + 64) + (64 * 10 + 10)


def test_the_scaler_divides_by_the_width_in_training_only_and_static_batch_norm_keeps_no_statistics():
    spec = ModelSpec(1, 8, 8, 3, width=4, norm="static-batch", scaler=True)
    model = build_model(spec, 1, 0.5)
    conv = model.stages[0][0]
    assert isinstance(conv, ScaledConv2d) and conv.rate == 0.5
    x = torch.randn(2, 1, 8, 8)
    plain = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(conv.train()(x), plain / 0.5)
    torch.testing.assert_close(conv.eval()(x), plain)
    assert not any("running" in k or "tracked" in k for k in model.state_dict())
    norm = StaticBatchNorm(2)
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([0.5, -1.0]))
    one = norm.eval()(torch.randn(1, 2, 1, 1))  # one value per channel: normalised to 0, so the bias
    torch.testing.assert_close(one.flatten(), torch.tensor([0.5, -1.0]))
    assert HeteroFL().model_spec(ModelSpec(1, 8, 8, 3, norm="batch")).norm == "static-batch"
    assert HeteroFL(static_bn=False, scaler=False).model_spec(ModelSpec(1, 8, 8, 3, norm="batch")) == \
        ModelSpec(1, 8, 8, 3, norm="batch")


# -------------------------------------------------------------------------- aggregation


def _client(cid, width, depth=4):
    return ClientInfo(node_id=100 + cid, client_id=cid, tier=f"w{width}", depth=depth, num_train=10, num_test=2,
                      width=width)


def _round(strategy, clients, current, fill, examples):
    """configure_train, then each client replies with its received slice filled with ``fill[cid]``; aggregate."""
    strategy.register_clients(clients, CNN)
    config = Instructions(config_to_json(config_from_dict({})), server_round=1).to_record()
    sent = list(strategy.configure_train(1, to_record(current), config, grid=None))
    replies = []
    for message in sent:
        cid = strategy.recipient(message).client_id
        message.metadata.group_id = str(message.metadata.dst_node_id)
        arrays = {k: np.full_like(v, fill[cid]) for k, v in to_numpy(message.content.array_records[ARRAYS]).items()}
        replies.append(reply(message, TrainReply(cid, examples[cid], 0.0), to_record(arrays)))
    new, _ = strategy.aggregate_train(1, replies[::-1])
    return sent, to_numpy(new)


def test_heterofl_sends_corners_and_averages_each_element_over_its_holders(task_identity):
    current = {k: v.numpy() for k, v in build_model(CNN).state_dict().items()}
    clients = [_client(0, 1.0), _client(1, 0.5, depth=2)]  # one full model, one half width and half depth
    sent, new = _round(HeteroFL(), clients, current, fill={0: 3.0, 1: 1.0}, examples={0: 10, 1: 30})
    half = to_numpy(sent[1].content.array_records[ARRAYS])
    assert instructions_of(sent[1]).width == 0.5 and instructions_of(sent[1]).depth == 2
    np.testing.assert_array_equal(half["stages.1.0.weight"], current["stages.1.0.weight"][:4, :2])
    for key, corner in (("stages.1.0.weight", (slice(0, 4), slice(0, 2))),  # a convolution
                        ("exits.1.2.weight", (slice(0, 64), slice(0, 16)))):  # a linear layer (2x2 x 4 channels)
        expected = np.full(current[key].shape, 3.0, np.float32)  # only the full client holds the rest
        expected[corner] = (3.0 + 1.0) / 2  # both hold the corner; HeteroFL's mean is unweighted
        np.testing.assert_array_equal(new[key], expected)
    assert (new["stages.3.0.weight"] == 3.0).all()  # a stage only the full-depth client holds
    _, weighted = _round(FjORD(), clients, current, fill={0: 3.0, 1: 1.0}, examples={0: 10, 1: 30})
    assert weighted["stages.1.0.weight"][0, 0, 0, 0] == pytest.approx((3 * 10 + 1 * 30) / 40)  # FjORD: by examples
    assert weighted["stages.1.0.weight"][7, 3, 0, 0] == 3.0


def test_elements_no_client_holds_keep_their_value(task_identity):
    current = {k: v.numpy() for k, v in build_model(CNN).state_dict().items()}
    _, new = _round(HeteroFL(), [_client(0, 0.5), _client(1, 0.25)], current, {0: 2.0, 1: 4.0}, {0: 1, 1: 1})
    w, old = new["stages.1.0.weight"], current["stages.1.0.weight"]  # 8 x 4 of which 4 x 2, then 2 x 1, are held
    assert (w[:2, :1] == 3.0).all() and (w[:4, :2][2:] == 2.0).all() and (w[:2, 1:2] == 2.0).all()
    np.testing.assert_array_equal(w[4:], old[4:])
    np.testing.assert_array_equal(w[:, 2:], old[:, 2:])


def test_region_aggregate_refuses_corners_that_do_not_nest():
    rule = lambda key, values, weights, current: weighted_mean(values, weights)  # noqa: E731
    with pytest.raises(ValueError, match="not nested"):
        region_aggregate("w", [(np.zeros((1, 2)), 1.0), (np.zeros((2, 1)), 1.0)], np.zeros((2, 2)), rule)


def test_qfedavg_takes_each_elements_holders_at_q_0():
    current = {"w": np.zeros((2, 2))}
    new = qffl_aggregate([{"w": np.ones((2, 2))}, {"w": np.full((1, 1), 2.0)}], [0.5, 0.7], current, 0.0, 10.0)
    np.testing.assert_allclose(new["w"], [[1.5, 1.0], [1.0, 1.0]])  # q = 0: the plain mean of each element's holders
    assert QFedAvg.partial_tensors and not build_strategy(config_from_dict({"strategy": {"name": "fedadam"}})) \
        .partial_tensors


# ----------------------------------------------------------------------------------- FjORD


def test_fjord_draws_every_width_up_to_the_clients_own_equally_often():
    tiers = [0.25, 0.5, 1.0]
    assert FjORD().ordered_dropout(0.5, tiers) == OrderedDropout((0.25, 0.5))
    assert FjORD(distill=True).ordered_dropout(1.0, tiers) == OrderedDropout((0.25, 0.5, 1.0), True)
    draws = 6000
    for plan in (OrderedDropout((0.25, 0.5)), OrderedDropout((0.25, 0.5, 1.0))):
        generator = rng(0, Stream.WIDTHS, 1, 0)
        drawn = [plan.draw(generator) for _ in range(draws)]
        k = len(plan.widths)
        sigma = math.sqrt(draws * (1 / k) * (1 - 1 / k))
        assert set(drawn) == set(plan.widths)
        assert all(abs(drawn.count(w) - draws / k) < 4 * sigma for w in plan.widths)
        again = rng(0, Stream.WIDTHS, 1, 0)
        assert [plan.draw(again) for _ in range(draws)] == drawn  # seeded


def test_an_ordered_dropout_step_trains_only_the_drawn_widths_channels():
    model = build_model(CNN, 2, 1.0)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    cfg = config_from_dict({}).training
    loss = ordered_dropout_loss(model, OrderedDropout((0.5,)), rng(0, Stream.WIDTHS, 1, 0), cfg)
    loss(x, y).backward()
    grad = model.stages[1][0].weight.grad  # 8 x 4: the drawn width holds 4 x 2
    assert grad[:4, :2].abs().sum() > 0 and grad[4:].abs().sum() == 0 and grad[:, 2:].abs().sum() == 0
    half = build_model(CNN, 2, 0.5)
    half.load_state_dict(narrow_state(model.state_dict(), submodel_shapes(CNN, 2, 0.5)))
    model.eval()
    half.eval()
    for a, b in zip(width_forward(model, 0.5)(x), half(x)):
        torch.testing.assert_close(a, b)
    assert OrderedDropout((0.5, 1.0), True).forward_flops({0.5: 1.0, 1.0: 4.0}.get) == (1 + 4) / 2 + 4


# ------------------------------------------------------------------------------- runs


def test_the_plan_shows_each_tiers_width_flops_and_parameters():
    cfg = preflight(load_config(None, {"data.num_clients": 6, "rounds": 2, "tiers.0.width": 0.5}))
    spec = network_spec(cfg)
    plan = {t.name: t for t in make_plan(cfg).tiers}
    iot, phone = plan["iot"], plan["phone"]
    assert (iot.width, iot.depth, phone.width) == (0.5, 2, 1.0)
    assert iot.forward_flops == submodel_flops(spec, None, 0.5).exit_costs()[1]
    assert iot.params == submodel_params(spec, 2, 0.5) < submodel_params(spec, 2, 1.0)
    assert iot.down_bytes == 4 * sum(math.prod(s) for s in submodel_shapes(spec, 2, 0.5).values())


@pytest.mark.e2e
@pytest.mark.parametrize("options", [["strategy.name=heterofl", "model.norm=batch"],
                                     ["strategy.name=fjord", "strategy.options.distill=true"],
                                     ["strategy.name=scalefl", "training.kd_warmup_rounds=1"]],
                         ids=["heterofl", "fjord", "scalefl"])
def test_a_tiny_run_of_each_width_strategy_has_finite_metrics(options, tmp_path):
    overrides = ["rounds=2", "data.num_clients=6", "training.local_epochs=1", "training.batch_size=64",
                 "personalisation.epochs=1", "tiers.0.width=0.25", "tiers.1.width=0.5", *options]
    _, summary = run_inprocess(tmp_path / "run", overrides, nodes=3)
    personalised, global_ = summary["accuracy"]["personalised"], summary["accuracy"]["global"]
    assert 0 <= personalised["mean"] <= 1 and all(0 <= a <= 1 for a in global_["by_exit"].values())
    models = summary["submodels"]
    assert [models[t]["width"] for t in ("iot", "phone", "laptop")] == [0.25, 0.5, 1.0]
    assert models["iot"]["flops"] < models["phone"]["flops"] < models["laptop"]["flops"]
    assert all(math.isfinite(m["flops"]) and m["params"] > 0 for m in models.values())
    cfg = config_from_dict({"strategy": {"name": options[0].split("=")[1]}, "model": {"norm": "batch"}})
    assert network_spec(cfg).norm == ("static-batch" if "heterofl" in options[0] else "batch")
