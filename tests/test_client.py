"""The ClientApp's handlers called as Flower calls them: message in, reply out, Context kept."""

import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict

from fl_ee.client import app
from fl_ee.config import config_from_dict, config_to_json
from fl_ee.data import client_data
from fl_ee.models import EarlyExitNet, ModelSpec, slice_state
from fl_ee.protocol import (
    PERSONAL_EXITS,
    ClientReport,
    EvaluateReply,
    Instructions,
    TrainReply,
    instruction_message,
    payload_of,
)
from fl_ee.training import local_loss

CFG = config_from_dict({"data": {"num_clients": 4}, "training": {"batch_size": 32}})


pytestmark = pytest.mark.usefixtures("task_identity")


def _message(kind: str, depth: int, server_round: int, cfg=CFG, seed: int | None = None, **extra) -> Message:
    if seed is not None:
        torch.manual_seed(seed)
    model = EarlyExitNet(ModelSpec(1, 8, 8, 10))
    instructions = Instructions(config_to_json(cfg), server_round=server_round, depth=depth, **extra)
    return instruction_message(ArrayRecord(slice_state(model.state_dict(), depth)), instructions, 1, kind)


def _context(client_id: int) -> Context:
    return Context(run_id=1, node_id=1, node_config={"partition-id": client_id, "num-partitions": 4},
                   state=RecordDict(), run_config={})


def test_train_returns_only_the_shared_slice_and_keeps_personal_exits_in_state():
    context = _context(2)
    reply = app(_message(MessageType.TRAIN, depth=2, server_round=1), context)
    keys = set(reply.content["arrays"])
    assert keys == set(_message(MessageType.TRAIN, 2, 1).content["arrays"])  # stages/exits 0..1, nothing personal
    assert payload_of(reply, TrainReply).num_examples > 0
    personal = context.state[PERSONAL_EXITS]
    assert set(personal) == {k.removeprefix("exits.") for k in keys if k.startswith("exits.")}

    first = {k: a.numpy().copy() for k, a in personal.items()}
    app(_message(MessageType.TRAIN, depth=2, server_round=2), context)
    second = {k: a.numpy() for k, a in context.state[PERSONAL_EXITS].items()}
    assert any(not np.array_equal(first[k], second[k]) for k in first)  # kept and trained further


def test_train_reports_the_local_loss_at_the_received_weights_when_asked():
    plain = app(_message(MessageType.TRAIN, depth=3, server_round=1), _context(1))
    assert payload_of(plain, TrainReply).initial_loss is None
    message = _message(MessageType.TRAIN, depth=3, server_round=1, want_initial_loss=True)
    received = EarlyExitNet(ModelSpec(1, 8, 8, 10), depth=3)
    received.load_state_dict(message.content["arrays"].to_torch_state_dict())
    x, y, _, _ = client_data(CFG, 1)
    expected = local_loss(received, x, y, CFG.training)
    metrics = payload_of(app(message, _context(1)), TrainReply)
    assert metrics.initial_loss == pytest.approx(expected, rel=1e-6)


def _trained(training: dict, server_round: int) -> dict[str, np.ndarray]:
    cfg = config_from_dict({"data": {"num_clients": 4}, "training": {"batch_size": 32, **training}})
    reply = app(_message(MessageType.TRAIN, 3, server_round, cfg, seed=0), _context(0))
    return {k: a.numpy() for k, a in reply.content["arrays"].items()}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_distillation_warm_up_and_options_reach_training():
    for distillation in ("last-exit", "mutual"):
        warm = {"distillation": distillation, "kd_warmup_rounds": 3}
        # before the warm-up round the client trains exactly as without distillation, from then on it does not
        assert _same(_trained(warm, 2), _trained({"distillation": "none"}, 2))
        assert not _same(_trained(warm, 3), _trained({"distillation": "none"}, 3))
    assert not _same(_trained({"distillation": "mutual"}, 1), _trained({"distillation": "last-exit"}, 1))
    assert not _same(_trained({"prox_mu": 0.5}, 1), _trained({}, 1))


def test_evaluate_uses_personal_exits_once_trained():
    context = _context(1)
    before = payload_of(app(_message(MessageType.EVALUATE, depth=3, server_round=1), context), EvaluateReply)
    app(_message(MessageType.TRAIN, depth=3, server_round=1), context)
    after = payload_of(app(_message(MessageType.EVALUATE, depth=3, server_round=1), context), EvaluateReply)
    assert len(after.exit_accuracy) == 3 and len(after.exit_fractions) == 3
    assert sum(after.exit_fractions) == pytest.approx(1.0)
    # the same global weights are evaluated; only the personal heads differ
    assert after.exit_accuracy != before.exit_accuracy


def test_a_paced_client_sleeps_its_simulated_time():
    start = time.perf_counter()
    app(_message(MessageType.TRAIN, depth=1, server_round=1, pace_s=0.5), _context(0))
    assert time.perf_counter() - start >= 0.5


def test_query_reports_the_clients_data_sizes():
    reply = payload_of(app(_message(MessageType.QUERY, depth=1, server_round=0), _context(3)), ClientReport)
    assert reply.client_id == 3 and reply.num_train > reply.num_test > 0


def test_evaluate_reports_the_full_cost_and_a_threshold_sweep():
    from fl_ee.client import depth_flops, model_spec
    from fl_ee.policies import SWEEP_THRESHOLDS

    m = payload_of(app(_message(MessageType.EVALUATE, depth=3, server_round=1), _context(0)), EvaluateReply)
    costs = depth_flops(model_spec(CFG), 3).exit_costs()
    assert m.full_flops == costs[-1] >= m.expected_flops
    assert len(m.sweep_accuracy) == len(m.sweep_flops) == len(SWEEP_THRESHOLDS)
    at = SWEEP_THRESHOLDS.index(CFG.exit_policy.threshold)  # the run's own threshold is on the grid
    assert m.sweep_accuracy[at] == m.adaptive_accuracy and m.sweep_flops[at] == m.expected_flops
    assert m.sweep_flops[-1] == costs[0]  # normalised entropy <= 1: every sample leaves at exit 1
