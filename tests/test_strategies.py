"""Shipped strategies: their math on tiny arrays against hand-computed values, and the registry."""

import math
import re
import sys

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fl_ee.cli import main
from fl_ee.core.config import config_from_dict, config_to_json
from fl_ee.core.errors import UserError
from fl_ee.wire.protocol import Instructions, TrainReply, instructions_of, reply
from strategies import (
    ClientInfo,
    DepthAwareStrategy,
    DepthFL,
    Exclusive,
    FedAdam,
    FedAvgM,
    FedDyn,
    FedYogi,
    QFedAvg,
    build_strategy,
)
from strategies.aggregation import holder_aggregate
from strategies.exclusive import full_model_clients
from strategies.feddyn import feddyn_correction
from strategies.qfedavg import qffl_aggregate
from strategies.registry import SHIPPED, strategy_class


def _clients(depths):
    return [ClientInfo(node_id=100 + i, client_id=i, tier=f"t{d}", depth=d, num_train=10, num_test=2)
            for i, d in enumerate(depths)]


def _arrays(values: dict[str, list[float]]) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.float32) for k, v in values.items()}


def _round_trip(strategy, current, client_arrays, metrics, config=None):
    """Send ``current`` through ``configure_train``, reply with ``client_arrays[client_id]``, aggregate."""
    config = config or Instructions(config_to_json(config_from_dict({})), server_round=1).to_record()
    sent = list(strategy.configure_train(1, ArrayRecord(_as_arrays(current)), config, grid=None))
    replies = []
    for message in sent:
        cid = strategy.recipient(message).client_id
        message.metadata.group_id = str(message.metadata.dst_node_id)  # as fl_ee.wire.exchange sends it
        payload = TrainReply(cid, num_examples=10, train_loss=0.0, **metrics[cid])
        replies.append(reply(message, payload, ArrayRecord(_as_arrays(client_arrays[cid]))))
    new, _ = strategy.aggregate_train(1, replies[::-1])  # arrival order must not matter
    return sent, {k: a.numpy() for k, a in new.items()}


def _as_arrays(values: dict[str, np.ndarray]) -> dict[str, Array]:
    return {k: Array(v) for k, v in values.items()}


# ------------------------------------------------------------------ exclusive


def test_full_model_clients_are_those_of_the_deepest_tier():
    clients = _clients([1, 2, 4, 2, 4])
    assert [c.client_id for c in full_model_clients(clients)] == [2, 4]
    assert [c.client_id for c in full_model_clients(_clients([2, 3, 3]))] == [1, 2]  # deepest of this run
    assert full_model_clients([]) == []


def test_exclusive_trains_only_full_model_clients(task_identity):
    strategy = Exclusive(fraction_train=1.0)
    strategy.register_clients(_clients([1, 2, 4, 2, 4]))
    current = _arrays({f"stages.{i}.w": [0.0] for i in range(4)})
    update = {2: _arrays({f"stages.{i}.w": [1.0] for i in range(4)}),
              4: _arrays({f"stages.{i}.w": [3.0] for i in range(4)})}
    sent, new = _round_trip(strategy, current, update, {2: {}, 4: {}})
    assert sorted(m.metadata.dst_node_id for m in sent) == [102, 104]
    assert all(v[0] == pytest.approx(2.0) for v in new.values())  # equal example counts: plain mean
    half = Exclusive(fraction_train=0.5)
    half.register_clients(_clients([1, 2, 4, 2, 4]))
    assert len(half.sample(1, 0.5, 2, half.train_pool())) == 1  # the fraction applies among full-depth clients
    # evaluation still reaches everyone
    config = Instructions(config_to_json(config_from_dict({})), server_round=1).to_record()
    evaluated = strategy.configure_evaluate(1, ArrayRecord(_as_arrays(current)), config, grid=None)
    assert len(list(evaluated)) == 5


# --------------------------------------------------------------------- feddyn


def test_feddyn_correction_by_hand():
    # holders' average 3 on current 1, 2 of 4 clients hold it, alpha 0.5:
    # h = 0 - 0.5 * 2/4 * (3 - 1) = -0.5; new = 3 - (-0.5) / 0.5 = 4
    new, h = feddyn_correction(np.array([3.0]), np.array([1.0]), np.zeros(1), 0.5, 2, 4)
    assert (new[0], h[0]) == (pytest.approx(4.0), pytest.approx(-0.5))
    # next round: average 5 on 4 -> h = -0.5 - 0.25 * 1 = -0.75; new = 5 + 1.5 = 6.5
    new, h = feddyn_correction(np.array([5.0]), np.array([4.0]), h, 0.5, 2, 4)
    assert (new[0], h[0]) == (pytest.approx(6.5), pytest.approx(-0.75))


def test_feddyn_keeps_h_per_tensor_over_its_holders():
    strategy = FedDyn(alpha=0.5, weighted=False)
    strategy.register_clients(_clients([1, 2, 2, 2]))  # M = 4
    current = _arrays({"stages.0.w": [1.0], "stages.1.w": [1.0], "stages.2.w": [9.0]})
    updates = [_arrays({"stages.0.w": [2.0]}), _arrays({"stages.0.w": [4.0], "stages.1.w": [3.0]})]
    new = holder_aggregate(updates, [1, 3], current, strategy.aggregate_tensor)
    assert new["stages.0.w"][0] == pytest.approx(4.0)  # unweighted average 3, 2 holders: as above
    # stages.1: one holder, average 3: h = -0.5 * 1/4 * 2 = -0.25; new = 3 + 0.5 = 3.5
    assert new["stages.1.w"][0] == pytest.approx(3.5) and strategy.h["stages.1.w"][0] == pytest.approx(-0.25)
    assert new["stages.2.w"][0] == 9.0 and "stages.2.w" not in strategy.h  # no holder: no move, no state
    assert new["stages.0.w"].dtype == np.float32


# ---------------------------------------------------------------- fedadam / fedyogi


def test_fedadam_by_hand_over_two_rounds():
    s = FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    # round 1: delta = 1.5 - 1 = 0.5; m = 0.1 * 0.5; v = 0.01 * 0.25; step size 0.1 sqrt(0.01) / 0.1 = 0.1
    w1 = s.aggregate_tensor("k", [np.array([1.0]), np.array([2.0])], [1, 1], np.array([1.0]))[0]
    assert w1 == pytest.approx(1 + 0.1 * 0.05 / (math.sqrt(0.0025) + 1e-3))
    # round 2: one holder at w1 - 0.2 -> delta = -0.2; m = 0.045 - 0.02; v = 0.99 * 0.0025 + 0.01 * 0.04
    w2 = s.aggregate_tensor("k", [np.array([w1 - 0.2])], [1], np.array([w1]))[0]
    step = 0.1 * math.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    assert w2 == pytest.approx(w1 + step * 0.025 / (math.sqrt(0.002875) + 1e-3))
    assert s.t == {"k": 2}


def test_fedyogi_by_hand_over_three_rounds():
    s = FedYogi(eta=0.01, beta_1=0.9, beta_2=0.99, tau=1e-3)
    # round 1: v = 0 - 0.01 * 0.25 * sign(0 - 0.25) = 0.0025 (as Adam's); no bias correction
    w1 = s.aggregate_tensor("k", [np.array([1.5])], [1], np.array([1.0]))[0]
    assert w1 == pytest.approx(1 + 0.01 * 0.05 / (0.05 + 1e-3))
    # round 2: delta = -0.2: v = 0.0025 + 0.01 * 0.04 = 0.0029 (v < delta^2: grows)
    w2 = s.aggregate_tensor("k", [np.array([w1 - 0.2])], [1], np.array([w1]))[0]
    assert w2 == pytest.approx(w1 + 0.01 * 0.025 / (math.sqrt(0.0029) + 1e-3))
    # round 3: delta = 0.01: v > delta^2, so v shrinks: 0.0029 - 0.01 * 0.0001 (Adam: 0.99 * 0.0029 + 0.000001)
    s.aggregate_tensor("k", [np.array([w2 + 0.01])], [1], np.array([w2]))
    assert s.v["k"][0] == pytest.approx(0.0029 - 0.000001)


def test_server_optimisers_move_only_tensors_with_holders():
    s = FedAdam()
    current = _arrays({"stages.0.w": [1.0, 2.0], "stages.3.w": [5.0]})
    for _ in range(3):  # only stage 0 has holders, three rounds running
        current = holder_aggregate([_arrays({"stages.0.w": [1.5, 2.5]})], [4], current, s.aggregate_tensor)
    assert current["stages.3.w"][0] == 5.0 and set(s.m) == {"stages.0.w"} and s.t == {"stages.0.w": 3}
    assert current["stages.0.w"].dtype == np.float32
    # a tensor's first update uses t = 1 whatever the round: step eta * m / (sqrt(v) + tau) ~ eta
    late = holder_aggregate([_arrays({"stages.3.w": [6.0]})], [1], current, s.aggregate_tensor)
    assert late["stages.3.w"][0] == pytest.approx(5 + 0.1 * 0.1 / (0.1 + 1e-3))


# -------------------------------------------------------------------- fedavgm


def test_fedavgm_by_hand_over_three_rounds():
    s = FedAvgM(server_learning_rate=0.5, server_momentum=0.9)
    # round 1: holders 1 and 2 weighted 1:3 average 1.75: v = 0.75, w = 1 + 0.5 x 0.75
    w1 = s.aggregate_tensor("k", [np.array([1.0], np.float32), np.array([2.0], np.float32)], [1, 3],
                            np.array([1.0], np.float32))
    assert w1[0] == pytest.approx(1.375) and w1.dtype == np.float32
    # round 2: one holder at w1 - 0.5: v = 0.9 x 0.75 - 0.5 = 0.175, w = 1.375 + 0.0875
    w2 = s.aggregate_tensor("k", [w1 - 0.5], [1], w1)
    assert w2[0] == pytest.approx(1.4625)
    # round 3: the holder returns w2 unchanged; momentum alone moves it: v = 0.1575, w = 1.4625 + 0.07875
    w3 = s.aggregate_tensor("k", [w2.copy()], [1], w2)
    assert w3[0] == pytest.approx(1.54125) and s.v["k"][0] == pytest.approx(0.1575)


def test_fedavgm_moves_only_tensors_with_holders_and_without_momentum_is_depthfl():
    current = _arrays({"stages.0.w": [1.0, 2.0], "stages.3.w": [5.0]})
    updates, weights = [_arrays({"stages.0.w": [1.5, 2.5]}), _arrays({"stages.0.w": [3.0, 0.0]})], [4, 1]
    s = FedAvgM()
    new = holder_aggregate(updates, weights, current, s.aggregate_tensor)
    assert new["stages.3.w"][0] == 5.0 and set(s.v) == {"stages.0.w"}  # no holder: no move, no momentum
    plain = FedAvgM(server_momentum=0.0)
    same = holder_aggregate(updates, weights, current, plain.aggregate_tensor)
    depthfl = holder_aggregate(updates, weights, current, DepthFL().aggregate_tensor)
    assert np.allclose(same["stages.0.w"], depthfl["stages.0.w"]) and plain.state_dict() == {}
    assert same["stages.0.w"].tolist() == pytest.approx([1.8, 2.0])  # (4 x 1.5 + 3) / 5, (4 x 2.5 + 0) / 5


# -------------------------------------------------------------------- qfedavg


def test_qffl_aggregate_by_hand():
    # L = 2, q = 1. Client A (depth 1, loss 1) returns s0 = 0; client B (depth 2, loss 3) returns s0 = 2, s1 = 1.
    # Delta_A = 2 (1 - 0) = 2, |Delta_A|^2 = 4, h_A = 1 * 1 * 4 + 2 * 1 = 6
    # Delta_B = (2 (1 - 2), 2 (0 - 1)) = (-2, -2), |Delta_B|^2 = 8, h_B = 1 * 1 * 8 + 2 * 3 = 14
    current = _arrays({"stages.0.w": [1.0], "stages.1.w": [0.0], "stages.2.w": [7.0]})
    updates = [_arrays({"stages.0.w": [0.0]}), _arrays({"stages.0.w": [2.0], "stages.1.w": [1.0]})]
    new = qffl_aggregate(updates, [1.0, 3.0], current, q=1.0, lipschitz=2.0)
    assert new["stages.0.w"][0] == pytest.approx(1 - (1 * 2 + 3 * -2) / (6 + 14))  # 1.2
    assert new["stages.1.w"][0] == pytest.approx(0 - 3 * -2 / 14)  # only B holds it
    assert new["stages.2.w"][0] == 7.0
    # q = 0 is the unweighted mean over holders
    plain = qffl_aggregate(updates, [1.0, 3.0], current, q=0.0, lipschitz=2.0)
    assert plain["stages.0.w"][0] == pytest.approx(1.0) and plain["stages.1.w"][0] == pytest.approx(1.0)


def test_qfedavg_weighs_by_reported_loss_with_the_runs_learning_rate(task_identity):
    strategy = QFedAvg(q=1.0)
    strategy.register_clients(_clients([1, 2]))
    config = Instructions(config_to_json(config_from_dict({"training": {"lr": 0.5}})), server_round=1).to_record()
    current = _arrays({"stages.0.w": [1.0], "stages.1.w": [0.0]})
    replies = {0: _arrays({"stages.0.w": [0.0]}), 1: _arrays({"stages.0.w": [2.0], "stages.1.w": [1.0]})}
    losses = {0: {"initial_loss": 1.0}, 1: {"initial_loss": 3.0}}
    sent, new = _round_trip(strategy, current, replies, losses, config)
    assert new["stages.0.w"][0] == pytest.approx(1.2) and new["stages.1.w"][0] == pytest.approx(3 / 7)  # L = 1/0.5
    assert all(instructions_of(m).want_initial_loss for m in sent)  # clients are asked to report the loss


def test_qfedavg_takes_the_rounds_scheduled_learning_rate(task_identity):
    strategy = QFedAvg(q=1.0)
    strategy.register_clients(_clients([1, 2]))
    cfg = config_from_dict({"training": {"lr": 0.5, "lr_schedule": "exp", "lr_decay": 0.5}})
    config = Instructions(config_to_json(cfg), server_round=2, lr=0.25).to_record()
    current = _arrays({"stages.0.w": [1.0], "stages.1.w": [0.0]})
    replies = {0: _arrays({"stages.0.w": [0.0]}), 1: _arrays({"stages.0.w": [2.0], "stages.1.w": [1.0]})}
    losses = {0: {"initial_loss": 1.0}, 1: {"initial_loss": 3.0}}
    _, new = _round_trip(strategy, current, replies, losses, config)
    # L = 1/0.25 = 4: Delta_A = 4, h_A = 16 + 4 = 20; Delta_B = (-4, -4), h_B = 32 + 4 x 3 = 44
    assert new["stages.0.w"][0] == pytest.approx(1 - (4 - 3 * 4) / 64) and new["stages.1.w"][0] == pytest.approx(3 / 11)


# ------------------------------------------------------------------- registry


def test_every_shipped_strategy_builds_and_cites_its_source():
    for name, path in SHIPPED.items():
        cls = strategy_class(name)
        assert issubclass(cls, DepthAwareStrategy) and path.endswith(f":{cls.__name__}")
        assert isinstance(build_strategy(config_from_dict({"strategy": {"name": name}})), cls)
        source = sys.modules[cls.__module__].__doc__
        assert re.search(r"et al\., .*(ICLR|NeurIPS|KDD|ICML|CVPR) 20\d\d", source), name  # authors, venue, year


@pytest.mark.parametrize(
    ("name", "options", "key"),
    [
        ("depthfl", {"weighted": "yes"}, "strategy.options.weighted"),
        ("feddyn", {"alpha": 0}, "strategy.options.alpha"),
        ("fedadam", {"eta": "fast"}, "strategy.options.eta"),
        ("fedyogi", {"beta_2": 1.0}, "strategy.options.beta_2"),
        ("fedavgm", {"server_momentum": 1.0}, "strategy.options.server_momentum"),
        ("fedavgm", {"server_learning_rate": 0}, "strategy.options.server_learning_rate"),
        ("qfedavg", {"q": -1}, "strategy.options.q"),
        ("exclusive", {"alpha": 0.1}, "strategy.options.alpha"),  # not an option of exclusive
    ],
)
def test_bad_options_name_their_key(name, options, key):
    with pytest.raises(UserError) as info:
        build_strategy(config_from_dict({"strategy": {"name": name, "options": options}}))
    assert info.value.key == key


def test_options_become_constructor_arguments():
    options = {"eta": 0.01, "beta_1": 0.5, "weighted": False}
    strategy = {"name": "fedadam", "fraction_train": 0.5, "options": options}
    s = build_strategy(config_from_dict({"seed": 3, "strategy": strategy}))
    got = (s.eta, s.beta_1, s.beta_2, s.tau, s.weighted, s.fraction_train, s.seed)
    assert got == (0.01, 0.5, 0.99, 1e-3, False, 0.5, 3)


def test_list_strategies_shows_every_shipped_name_with_a_description(capsys):
    assert main(["list", "strategies"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert set(SHIPPED) <= set(listed)
    assert listed["fedadam"].startswith("FedAdam:") and listed["qfedavg"].startswith("q-FedAvg:")
