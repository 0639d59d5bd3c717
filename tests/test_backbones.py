"""Backbones, exit placement, exit heads and start-up weights, against hand-computed values."""

import pickle
import random
import warnings
from pathlib import Path

import pytest
import torch

from fl_ee.cli import main
from fl_ee.core.config import config_from_dict, load_config
from fl_ee.core.errors import UserError
from fl_ee.core.layout import block_count, even_flops_exits
from fl_ee.federation.preflight import machine_memory, preflight
from fl_ee.models import ModelSpec, block_index, build_model, load_weights, measure_flops, parameter_count, slice_state

TINY_RESNET = ModelSpec(1, 8, 8, 3, width=2, backbone="resnet", layers=(1, 1))
TINY_MOBILENET = ModelSpec(1, 8, 8, 3, width=8, backbone="mobilenet_v2")


@pytest.mark.e2e
@pytest.mark.parametrize("spec", [ModelSpec(1, 8, 8, 3, width=2), TINY_RESNET, TINY_MOBILENET,
                                  ModelSpec(1, 8, 8, 3, width=2, backbone="resnet", layers=(2, 1), exits=(1, 2, 3),
                                            exit_head="conv", norm="batch")])
def test_a_depth_d_model_holds_exactly_the_keys_below_d_for_every_backbone_and_depth(spec):
    full = build_model(spec)
    x = torch.randn(2, 1, 8, 8)
    full.eval()
    for depth in range(1, spec.num_exits + 1):
        sub = full.submodel(depth)
        assert list(sub.state_dict()) == list(slice_state(full.state_dict(), depth))
        assert {block_index(k) for k in sub.state_dict()} == set(range(depth))
        sub.eval()
        for a, b in zip(sub(x), full(x)[:depth], strict=False):
            torch.testing.assert_close(a, b)
    assert len(full(x)) == spec.num_exits


def test_resnet_stages_hold_the_blocks_between_exits():
    state = build_model(TINY_RESNET).state_dict()
    conv = ["conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias"]
    # stage 1: stem conv, its GroupNorm, ReLU, then layer1.0; stage 2: layer2.0 with its strided downsample
    assert [k for k in state if k.startswith("stages.0.")] == [
        "stages.0.0.weight", "stages.0.1.weight", "stages.0.1.bias", *(f"stages.0.3.{k}" for k in conv)]
    assert [k for k in state if k.startswith("stages.1.")] == [
        *(f"stages.1.0.{k}" for k in conv), "stages.1.0.downsample.0.weight", "stages.1.0.downsample.1.weight",
        "stages.1.0.downsample.1.bias"]
    assert [k for k in state if k.startswith("exits.")] == [  # default MLP heads
        f"exits.{i}.{j}.{p}" for i in (0, 1) for j in (2, 4) for p in ("weight", "bias")]


def test_mobilenet_v2_stages_are_torchvision_features_between_the_default_exits():
    names = build_model(TINY_MOBILENET).torchvision_names
    assert TINY_MOBILENET.exits == (3, 6, 13, 18) and block_count("mobilenet_v2", ()) == 18
    assert [names[f"features.{k}"] for k in (0, 1, 3, 4, 6, 7, 13, 14, 18)] == [
        "stages.0.0", "stages.0.1", "stages.0.3", "stages.1.0", "stages.1.2", "stages.2.0", "stages.2.6",
        "stages.3.0", "stages.3.4"]


def test_one_block_resnet_flops_and_parameters_by_hand():
    # 1x4x4 input, width 2, no norm: stem conv 3x3 1->2 and a BasicBlock of two 3x3 convs 2->2, all at 4x4.
    spec = ModelSpec(1, 4, 4, 3, width=2, backbone="resnet", layers=(1,), norm="none", exit_head="linear")
    model = build_model(spec)
    flops = measure_flops(model)
    macs = 16 * 9 * 1 * 2 + 2 * (16 * 9 * 2 * 2)  # 288 + 1152 multiply-accumulates
    assert flops.stages == (2 * macs,) == (2880,)
    assert flops.exits == (2 * 2 * 3,)  # global pooling (not counted), then a 2 -> 3 linear layer
    assert parameter_count(model.stages[0]) == 9 * 2 + 2 * (9 * 2 * 2)  # no conv bias under a ResNet
    assert parameter_count(model.exits[0]) == 2 * 3 + 3


def test_conv_head_flops_by_hand():
    spec = ModelSpec(1, 4, 4, 3, width=2, backbone="resnet", layers=(1,), norm="none", exit_head="conv")
    # a strided 3x3 conv 2->2 with bias: 4x4 -> 2x2 outputs, then pooling and a 2 -> 3 linear layer
    assert measure_flops(build_model(spec)).exits == (2 * (4 * 9 * 2 * 2) + 2 * 2 * 3,)


@pytest.mark.parametrize(("flops", "count", "exits"), [
    ([10, 10, 40, 20, 20], 2, (3, 5)),  # cumulative 10 20 60 80 100: closest to 50 is 60, then 100
    ([1, 1, 1, 1], 4, (1, 2, 3, 4)),
    ([5, 1, 1, 1], 2, (1, 4)),  # cumulative 5 6 7 8: closest to 4 is 5
    ([100, 1, 1], 3, (1, 2, 3)),  # every exit keeps room for the ones after it
    ([2, 2, 2, 2], 1, (4,)),
    ([1, 3, 1, 3], 2, (2, 4)),  # cumulative 1 4 5 8: 4 is the closest to 4
])
def test_even_flops_placement(flops, count, exits):
    assert even_flops_exits(flops, count) == exits


def test_even_flops_spaces_a_real_backbone_by_its_measured_blocks():
    cfg = config_from_dict({"model": {"backbone": "resnet", "width": 2, "layers": [1, 1, 1], "exits": "even-flops",
                                      "num_exits": 2}})
    assert cfg.tiers[0].depth == 2  # the default tier holds every exit
    from fl_ee.models import block_flops, model_spec

    spec = model_spec(cfg.model, 1, 8, 8, 10)
    assert spec.exits == even_flops_exits(block_flops(spec), 2) and spec.num_exits == 2


@pytest.mark.parametrize(("raw", "message"), [
    ({"model": {"backbone": "resnet", "exits": [2, 4, 9]}},
     "model.exits: block 9 is past the backbone's 8 blocks (resnet with layers [2, 2, 2, 2])"),
    ({"model": {"exits": [1, 5]}}, "model.exits: block 5 is past the backbone's 4 blocks (cnn)"),
    ({"model": {"exits": [2, 2]}}, "model.exits: block numbers must be increasing and >= 1, got [2, 2]"),
    ({"model": {"exits": []}}, "model.exits: must name at least one block"),
    ({"model": {"exits": "middle"}}, "model.exits: expected auto, even-flops or a list of block numbers, got 'middle'"),
    ({"model": {"exits": "even-flops", "num_exits": 5}},
     "model.num_exits: 5 exits do not fit on the backbone's 4 blocks (cnn)"),
    ({"model": {"backbone": "resnet", "layers": [2, 0]}},
     "model.layers: every group needs at least one block, got [2, 0]"),
    ({"model": {"exits": [1, 3]}, "tiers": [{"name": "a", "share": 1.0, "depth": 3}]},
     "tiers.0.depth: must be in 1..2 (the model has 2 exits)"),
    ({"model": {"backbone": "resnet", "layers": [1, 1, 1, 1, 1, 1]},
      "tiers": [{"name": "a", "share": 0.5, "depth": 6}, {"name": "b", "share": 0.5, "depth": 0}]},
     "tiers.1.depth: must be in 1..6 (the model has 6 exits)"),
])
def test_bad_models_are_one_line_naming_the_key(raw, message):
    with pytest.raises(UserError) as info:
        config_from_dict(raw)
    assert str(info.value) == message


def _resnet(layers):
    from torchvision.models.resnet import BasicBlock, ResNet  # ~1 s to import: when a test needs it, not at collection

    return ResNet(BasicBlock, layers).eval()


def test_torchvision_resnet_weights_map_onto_the_stages():
    tv = _resnet([1, 1, 1, 1])
    model = build_model(ModelSpec(3, 40, 40, 10, width=64, backbone="resnet", layers=(1, 1, 1, 1), norm="batch"))
    load_weights_from(model, tv.state_dict())
    x = torch.randn(2, 3, 40, 40)  # above 32 px: ImageNet's stem, as torchvision's
    with torch.no_grad():
        want = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        torch.testing.assert_close(model.eval().features(x)[-1], want)


def test_torchvision_mobilenet_v2_weights_map_onto_the_stages():
    from torchvision.models import MobileNetV2

    tv = MobileNetV2(width_mult=0.25).eval()
    model = build_model(ModelSpec(3, 64, 64, 10, width=8, backbone="mobilenet_v2", norm="batch"))
    load_weights_from(model, tv.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().features(x)[-1], tv.features(x))


def load_weights_from(model, state, path=None):
    path = path or f"/tmp/fl-ee-test-weights-{id(model)}.pt"
    torch.save(state, path)
    load_weights(model, path)


@pytest.fixture
def saved(tmp_path):
    """A full-depth model's state saved for the default (digits, cnn) config, and the path."""
    from fl_ee.data.datasets import load_dataset
    from fl_ee.federation.server import initial_model

    cfg = load_config(None, {"model.width": 4})
    state = initial_model(cfg, load_dataset(cfg.data)).state_dict()
    state = {k: v + 1 for k, v in state.items()}
    torch.save(state, tmp_path / "w.pt")
    return state, tmp_path / "w.pt"


def test_weights_start_the_global_model(saved):
    from fl_ee.data.datasets import load_dataset
    from fl_ee.federation.server import initial_model

    state, path = saved
    cfg = preflight(load_config(None, {"model.width": 4, "model.weights": str(path)}))
    model = initial_model(cfg, load_dataset(cfg.data))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_weights_that_do_not_fit_are_one_line(saved, tmp_path):
    state, path = saved
    cases = [
        ({"model.width": 8}, f"{path}: stages.0.0.weight is [4, 1, 3, 3] in the file but [8, 1, 3, 3] in this model"),
        ({"model.width": 4, "model.exits": [1, 2, 3], "tiers.2.depth": 3},  # stage 4: conv and norm, 2 linear layers
         f"{path}: exits.3.2.bias has no place in this model (8 such keys); save the state of a full-depth "
         f"model of the same config"),
        ({"model.width": 4, "model.weights": str(tmp_path / "none.pt")}, f"{tmp_path / 'none.pt'}: no such file"),
        ({"model.backbone": "resnet", "model.width": 64, "model.norm": "batch", "model.layers": [1, 1, 1, 1],
          "model.weights": str(tmp_path / "tv.pt")},  # digits are 8x8: the CIFAR stem, not ImageNet's 7x7
         f"{tmp_path / 'tv.pt'}: stages.0.0.weight is [64, 3, 7, 7] in the file but [64, 1, 3, 3] in this model"),
    ]
    torch.save(_resnet([1, 1, 1, 1]).state_dict(), tmp_path / "tv.pt")
    for overrides, message in cases:
        with pytest.raises(UserError) as info:
            preflight(load_config(None, {"model.weights": str(path), **overrides}))
        assert str(info.value) == f"model.weights: {message}"
    (tmp_path / "junk.pt").write_text("not a tensor file")
    with pytest.raises(UserError, match="junk.pt: not a state-dict file fl-ee can read safely"):
        preflight(load_config(None, {"model.weights": str(tmp_path / "junk.pt")}))


def touch(path: Path) -> None:
    """What :class:`Payload` runs when it is unpickled."""
    path.touch()


class Payload:
    """Unpickled, it would create ``marker``: code a weights file must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return touch, (self.marker,)


def test_weights_that_hold_code_or_random_bytes_are_one_line_that_keeps_the_safe_loader(tmp_path, capsys):
    marker, control = tmp_path / "ran", tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()  # the payload is real: pickle runs it
    (tmp_path / "payload.pkl").write_bytes(pickle.dumps(Payload(marker)))  # a bare pickle, protocol 4
    torch.save({"stages.0.0.weight": torch.zeros(1), "x": Payload(marker)}, tmp_path / "payload.pt")  # torch's zip
    (tmp_path / "random.pt").write_bytes(random.Random(0).randbytes(4096))
    (tmp_path / "text.pt").write_text("hello\n")
    not_tensors = "it is not a torch.save file of tensors"
    for name, why in [("payload.pkl", not_tensors), ("payload.pt", f"it holds {__name__}.touch"),
                      ("random.pt", not_tensors), ("text.pt", not_tensors)]:
        path = tmp_path / name
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["check", "--set", "model.width=4", "--set", f"model.weights={path}"]) == 2
        assert capsys.readouterr().err == (
            f"fl-ee: error: model.weights: {path}: not a state-dict file fl-ee can read safely ({why}; fl-ee loads "
            f"tensors only, never other objects); save the weights with torch.save(model.state_dict(), PATH)\n")
        assert caught == []  # torch's UserWarnings are not passed on
    assert not marker.exists()  # nothing was unpickled


def test_a_network_too_wide_for_this_machine_says_lower_the_width_and_what_it_needs(capsys):
    message = (f"model.width: a cnn of width 100000 needs 9,362.3 GB for its weights alone (4 bytes per parameter), "
               f"more than this machine's {machine_memory() / 1e9:,.1f} GB of memory; lower model.width")
    with pytest.raises(UserError) as info:  # what fl-ee run and check say, in their preflight
        preflight(load_config(None, {"model.width": 100_000}))
    assert str(info.value) == message
    assert main(["list", "model", "--set", "model.width=100000"]) == 2
    assert capsys.readouterr().err == f"fl-ee: error: {message}\n"


def test_a_network_too_narrow_for_its_exits_says_raise_the_width(capsys):
    assert main(["check", "--set", "model.width=1", "--set", "model.exit_head=linear"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fl-ee: error: model.width: a cnn of width 1 cannot run on 8x8 images (")
    assert err.endswith("); raise model.width\n") and err.count("\n") == 1


def test_cli_refuses_an_exit_past_the_backbone_in_one_line(capsys):
    assert main(["check", "--set", "model.backbone=resnet", "--set", "model.exits=[2,4,9]"]) == 2
    err = capsys.readouterr().err
    assert err == ("fl-ee: error: model.exits: block 9 is past the backbone's 8 blocks "
                   "(resnet with layers [2, 2, 2, 2])\n")


def test_list_model_prints_each_exit_head_beside_its_stage(capsys):
    # digits (1x8x8), cnn width 16, linear heads: stage 1 is a 3x3 conv 1->16 at 8x8 and a GroupNorm
    assert main(["list", "model", "--set", "model.exit_head=linear"]) == 0
    rows = [line.strip("│ ").split("│") for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    first = [cell.strip() for cell in rows[0]]
    assert len(rows) == 4 and first[:6] == ["1", "1", f"{2 * 64 * 9 * 16 / 1e6:.4g}", f"{9 * 16 + 16 + 32:,}",
                                             f"{2 * 16 * 10 / 1e6:.4g}", f"{16 * 10 + 10:,}"]


def test_batch_norm_trains_on_a_batch_of_one_at_a_1x1_map_by_its_running_statistics():
    model = build_model(ModelSpec(1, 1, 1, 3, width=4, backbone="resnet", layers=(1,), norm="batch")).train()
    norm = model.stages[0][1]
    norm.running_mean.fill_(2.0)
    x = torch.full((1, 1, 1, 1), 1.0)
    model(x)[0].sum().backward()  # plain BatchNorm2d raises: one value per channel
    torch.testing.assert_close(norm.running_mean, torch.full((4,), 2.0))  # left as it was
    assert norm(torch.zeros(2, 4, 1, 1)).shape == (2, 4, 1, 1) and norm.num_batches_tracked == 1


def test_zero_dimensional_tensors_keep_their_shape_through_aggregation():
    import numpy as np

    from strategies.base import to_numpy, to_record

    state = build_model(ModelSpec(1, 8, 8, 3, width=2, backbone="resnet", layers=(1,), norm="batch")).state_dict()
    arrays = {k: v.numpy() for k, v in state.items()}
    assert arrays["stages.0.1.num_batches_tracked"].shape == ()
    assert {k: v.shape for k, v in to_numpy(to_record(arrays)).items()} == {k: v.shape for k, v in arrays.items()}
    assert to_numpy(to_record({"n": np.array(3)}))["n"].shape == ()


@pytest.mark.e2e
def test_a_batch_norm_resnet_with_conv_heads_and_augmentation_runs_a_federation(tmp_path):
    # the real ClientApp and strategy on the in-process grid: running statistics are averaged like weights
    from inprocess import run_inprocess

    _, summary = run_inprocess(tmp_path / "run", ["rounds=2", "data.num_clients=4", "model.backbone=resnet",
                                                  "model.width=4", "model.layers=[1,1,1]", "model.norm=batch",
                                                  "model.exit_head=conv", "data.augment=true", "tiers.2.depth=3"])
    assert set(summary["accuracy"]["global"]["by_exit"]) == {"1", "2", "3"}
    assert summary["clients"]["total"] == 4 and summary["accuracy"]["personalised"]["evaluated_clients"] == 4
    header = (tmp_path / "run" / "clients.csv").read_text().splitlines()[0].split(",")
    assert [c for c in header if c.startswith("accuracy_exit")] == [f"accuracy_exit{i}" for i in (1, 2, 3)]


def test_the_resnets_gradient_at_every_exit_is_float64s_to_float_rounding():
    # a faster layout once gave gradients 1% off in this network while its forward pass agreed to 3e-8
    torch.manual_seed(0)
    spec = ModelSpec(3, 32, 32, 10, width=8, exit_head="conv", backbone="resnet", norm="batch")  # cifar10-resnet's
    model = build_model(spec, 4)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))

    def gradients(dtype: torch.dtype) -> dict[str, torch.Tensor]:
        copy = build_model(spec, 4).to(dtype).train()
        copy.load_state_dict(model.state_dict())
        sum(torch.nn.functional.cross_entropy(z, y) for z in copy(x.to(dtype))).backward()
        return {name: p.grad.double() for name, p in copy.named_parameters()}

    exact, single = gradients(torch.float64), gradients(torch.float32)
    for name, grad in exact.items():
        assert float((single[name] - grad).abs().max() / grad.abs().max()) < 1e-3, name
