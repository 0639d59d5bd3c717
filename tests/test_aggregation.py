import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MessageType
from flwr.clientapp import ClientApp

from fl_ee.core.config import config_from_dict, config_to_json
from fl_ee.core.seeding import Stream
from fl_ee.models import EarlyExitNet, ModelSpec
from fl_ee.wire.exchange import Exchange, as_client
from fl_ee.wire.protocol import ARRAYS, Instructions, TrainReply, instructions_of, reply
from inprocess import InProcessGrid
from strategies import ClientInfo, DepthAwareStrategy, DepthFL, holder_aggregate, weighted_mean
from strategies.base import to_numpy, to_record


def test_weighted_mean_by_hand():
    out = weighted_mean([np.array([1.0, 2.0]), np.array([4.0, 8.0])], [1, 3])
    np.testing.assert_allclose(out, [(1 + 12) / 4, (2 + 24) / 4])
    assert out.dtype == np.float64
    out32 = weighted_mean([np.array([1.0], np.float32), np.array([2.0], np.float32)], [0, 0])
    assert out32.dtype == np.float32 and out32[0] == pytest.approx(1.5)  # zero weights: plain mean
    integers = weighted_mean([np.array(3), np.array(6)], [2, 1])  # 0-d counters (batch norm's) keep their dtype
    assert integers.shape == () and integers.dtype == np.array(3).dtype and integers == 4
    with pytest.raises(ValueError, match=r"one shape: \(2,\) and \(1,\)"):  # never broadcast
        weighted_mean([np.array([1.0, 2.0]), np.array([4.0])], [1, 1])


def test_holder_aggregate_averages_each_key_over_its_holders_only():
    current = {"stages.0.w": np.array([0.0]), "stages.1.w": np.array([10.0]), "stages.2.w": np.array([7.0])}
    updates = [
        {"stages.0.w": np.array([1.0])},  # depth 1, 10 examples
        {"stages.0.w": np.array([3.0]), "stages.1.w": np.array([20.0])},  # depth 2, 30 examples
    ]
    rule = lambda key, values, weights, cur: weighted_mean(values, weights)  # noqa: E731
    new = holder_aggregate(updates, [10, 30], current, rule)
    assert new["stages.0.w"][0] == pytest.approx((1 * 10 + 3 * 30) / 40)  # both hold stage 0
    assert new["stages.1.w"][0] == pytest.approx(20.0)  # only client 2 holds stage 1
    assert new["stages.2.w"][0] == 7.0  # nobody returned stage 2: unchanged


def test_holder_aggregate_rejects_foreign_keys():
    with pytest.raises(KeyError):
        holder_aggregate([{"x": np.zeros(1)}], [1], {"y": np.zeros(1)}, lambda *a: a[1][0])


def test_depthfl_unweighted_option():
    s = DepthFL(weighted=False)
    out = s.aggregate_tensor("k", [np.array([1.0]), np.array([4.0])], [1, 3], np.array([0.0]))
    assert out[0] == pytest.approx(2.5)


def _clients():
    return [ClientInfo(node_id=100 + i, client_id=i, tier=f"t{d}", depth=d, num_train=10, num_test=2)
            for i, d in enumerate([1, 2, 4, 2])]


def test_each_client_is_sent_exactly_its_depth_slice(task_identity):
    model = EarlyExitNet(ModelSpec(1, 8, 8, 10))
    arrays = ArrayRecord(model.state_dict())
    strategy = DepthAwareStrategy(fraction_train=1.0)
    strategy.register_clients(_clients())
    config = Instructions(config_to_json(config_from_dict({})), server_round=1).to_record()
    messages = list(strategy.configure_train(1, arrays, config, grid=None))
    assert [m.metadata.dst_node_id for m in messages] == [100, 101, 102, 103]
    for message, depth in zip(messages, [1, 2, 4, 2]):
        keys = set(message.content["arrays"])
        assert keys == {k for k in arrays if int(k.split(".")[1]) < depth}
        assert instructions_of(message).depth == depth
        assert message.metadata.message_type == MessageType.TRAIN


def test_sampling_is_seeded_and_sized_by_fraction():
    def sample(seed, rnd):
        s = DepthAwareStrategy(fraction_train=0.5, seed=seed)
        s.register_clients(_clients())
        return [c.client_id for c in s.sample(rnd, 0.5, Stream.SAMPLE_TRAIN)]

    assert len(sample(0, 1)) == 2
    assert sample(0, 1) == sample(0, 1)
    assert len({tuple(sample(0, r)) for r in range(1, 20)}) > 1  # rounds draw different clients


def _constant_app() -> ClientApp:
    """A ClientApp whose training sets every received tensor to ``partition-id + 1`` and reports
    ``10 * (partition-id + 1)`` examples; partition 4 raises (its error reply must not count)."""
    app = ClientApp(mods=[as_client])

    @app.train()
    def train(msg: Message, context) -> Message:
        p = int(context.node_config["partition-id"])
        if p == 4:
            raise RuntimeError("out of memory")
        arrays = {k: np.full_like(v, p + 1.0) for k, v in to_numpy(msg.content[ARRAYS]).items()}
        return reply(msg, TrainReply(p, num_examples=10 * (p + 1), train_loss=0.0), to_record(arrays))

    return app


def test_custom_rule_plugs_in_through_aggregate_train():
    """A rule overriding ``aggregate_tensor`` sees each key's holders, in client-id order, through the
    strategy's real ``aggregate_train`` on real (out-of-order, one failed) reply messages."""
    seen = {}

    class Median(DepthAwareStrategy):
        def aggregate_tensor(self, key, values, weights, current):
            seen[key] = ([float(v.flat[0]) for v in values], list(weights), float(current.flat[0]))
            return np.median(np.stack(values), axis=0)

    depths = [1, 2, 4, 2, 4]
    with InProcessGrid(2, _constant_app(), seed=3) as grid:
        clients = [ClientInfo(i, i, f"t{d}", d, 10, 2) for i, d in enumerate(depths)]
        model = EarlyExitNet(ModelSpec(1, 8, 8, 10))
        sent = {k: np.full_like(v, -1.0) for k, v in to_numpy(ArrayRecord(model.state_dict())).items()}
        results = {}
        for strategy in (Median(), DepthAwareStrategy()):
            strategy.register_clients(clients)
            config = Instructions(config_to_json(config_from_dict({})), server_round=1).to_record()
            messages = strategy.configure_train(1, to_record(sent), config, grid)
            replies = Exchange(grid, len(depths)).send(messages)
            assert sum(m.has_error() for m in replies) == 1  # partition 4
            new, metrics = strategy.aggregate_train(1, replies)
            results[type(strategy).__name__] = to_numpy(new)
            assert metrics["num-examples"] == 10 + 20 + 30 + 40

    # clients 0..3 send 1, 2, 3, 4 with 10, 20, 30, 40 examples; client 2 is the only depth-4 one left
    assert seen["stages.0.0.weight"] == ([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], -1.0)
    assert seen["stages.1.0.weight"] == ([2.0, 3.0, 4.0], [20.0, 30.0, 40.0], -1.0)
    assert seen["stages.3.0.weight"] == ([3.0], [30.0], -1.0)
    median, mean = results["Median"], results["DepthAwareStrategy"]
    expected_median = {0: 2.5, 1: 3.0, 2: 3.0, 3: 3.0}  # by hand: median(1,2,3,4), median(2,3,4), 3, 3
    expected_mean = {0: (10 + 40 + 90 + 160) / 100, 1: (40 + 90 + 160) / 90, 2: 3.0, 3: 3.0}  # example-weighted
    for key in sent:
        stage = int(key.split(".")[1])
        np.testing.assert_allclose(median[key], expected_median[stage], rtol=1e-6)
        np.testing.assert_allclose(mean[key], expected_mean[stage], rtol=1e-6)
    assert set(seen) == set(sent)  # every key has a holder: client 2 holds the whole model


def test_to_numpy_round_trip():
    model = EarlyExitNet(ModelSpec(1, 8, 8, 10), depth=1)
    arrays = to_numpy(ArrayRecord(model.state_dict()))
    for key, tensor in model.state_dict().items():
        np.testing.assert_array_equal(arrays[key], tensor.numpy())
