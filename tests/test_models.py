import pytest
import torch

from fl_ee.models import EarlyExitNet, ModelSpec, block_index, measure_flops, slice_state


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 5, 7)])
def test_every_exit_gives_class_logits_for_any_input_size(shape):
    model = EarlyExitNet(ModelSpec(*shape, num_classes=7))
    outs = model(torch.randn(2, *shape))
    assert [o.shape for o in outs] == [torch.Size([2, 7])] * 4


def test_state_keys_carry_stage_and_exit_index():
    state = EarlyExitNet(ModelSpec(1, 8, 8, 10)).state_dict()
    assert {block_index(k) for k in state} == {0, 1, 2, 3}
    assert all(k.startswith(("stages.", "exits.")) for k in state)


def test_submodel_holds_exactly_the_depth_slice_with_the_same_weights():
    full = EarlyExitNet(ModelSpec(1, 8, 8, 10))
    sub = full.submodel(2)
    assert list(sub.state_dict()) == list(slice_state(full.state_dict(), 2))
    assert max(block_index(k) for k in sub.state_dict()) == 1  # stages and exits 0 and 1
    x = torch.randn(3, 1, 8, 8)
    for a, b in zip(sub(x), full(x)[:2]):
        torch.testing.assert_close(a, b)


def test_flops_match_hand_computed_counts():
    # 8x8 input, base width 16, MLP heads; FLOPs = 2 x multiply-accumulates.
    flops = measure_flops(EarlyExitNet(ModelSpec(1, 8, 8, 10, width=16, exit_head="mlp")))
    conv = lambda hw, cin, cout: 2 * hw * cin * cout * 9  # noqa: E731
    mlp = lambda c: 2 * (4 * c * 128 + 128 * 10)  # noqa: E731  (2x2 pooled features -> 128 -> 10)
    # spatial size 8 -> pooled to 4 -> 2 -> 1; convs run at 8x8, 4x4, 2x2, 1x1
    assert flops.stages == (conv(64, 1, 16), conv(16, 16, 32), conv(4, 32, 64), conv(1, 64, 64))
    assert flops.exits == (mlp(16), mlp(32), mlp(64), mlp(64))
    s, e = flops.stages, flops.exits
    assert flops.exit_costs() == (s[0] + e[0], s[0] + e[0] + s[1] + e[1], sum(s[:3]) + sum(e[:3]), sum(s) + sum(e))


def test_linear_head_flops():
    flops = measure_flops(EarlyExitNet(ModelSpec(3, 32, 32, 10, width=8, exit_head="linear"), depth=1))
    assert flops.stages == (2 * 32 * 32 * 3 * 8 * 9,)
    assert flops.exits == (2 * 8 * 10,)
