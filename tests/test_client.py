"""The ClientApp's handlers called as Flower calls them: message in, reply out, Context kept."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fl_ee.client import PERSONAL_KEY, app
from fl_ee.config import config_from_dict, config_to_json
from fl_ee.models import EarlyExitCNN, ModelSpec, slice_state

CFG = config_from_dict({"data": {"num_clients": 4}, "training": {"batch_size": 32}})


@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _message(kind: str, depth: int, server_round: int) -> Message:
    model = EarlyExitCNN(ModelSpec(1, 8, 8, 10))
    content = RecordDict(
        {
            "arrays": ArrayRecord(slice_state(model.state_dict(), depth)),
            "config": ConfigRecord({"run-config": config_to_json(CFG), "server-round": server_round, "depth": depth}),
        }
    )
    message = Message(content, dst_node_id=1, message_type=kind)
    return message


def _context(client_id: int) -> Context:
    return Context(run_id=1, node_id=1, node_config={"partition-id": client_id, "num-partitions": 4},
                   state=RecordDict(), run_config={})


def test_train_returns_only_the_shared_slice_and_keeps_personal_exits_in_state():
    context = _context(2)
    reply = app(_message(MessageType.TRAIN, depth=2, server_round=1), context)
    keys = set(reply.content["arrays"])
    assert keys == set(_message(MessageType.TRAIN, 2, 1).content["arrays"])  # stages/exits 0..1, nothing personal
    assert reply.content["metrics"]["num-examples"] > 0
    personal = context.state[PERSONAL_KEY]
    assert set(personal) == {k.removeprefix("exits.") for k in keys if k.startswith("exits.")}

    first = {k: a.numpy().copy() for k, a in personal.items()}
    app(_message(MessageType.TRAIN, depth=2, server_round=2), context)
    second = {k: a.numpy() for k, a in context.state[PERSONAL_KEY].items()}
    assert any(not np.array_equal(first[k], second[k]) for k in first)  # kept and trained further


def test_evaluate_uses_personal_exits_once_trained():
    context = _context(1)
    before = app(_message(MessageType.EVALUATE, depth=3, server_round=1), context).content["metrics"]
    app(_message(MessageType.TRAIN, depth=3, server_round=1), context)
    after = app(_message(MessageType.EVALUATE, depth=3, server_round=1), context).content["metrics"]
    assert len(after["exit-accuracy"]) == 3 and len(after["exit-fractions"]) == 3
    assert sum(after["exit-fractions"]) == pytest.approx(1.0)
    # the same global weights are evaluated; only the personal heads differ
    assert list(after["exit-accuracy"]) != list(before["exit-accuracy"])


def test_query_reports_the_clients_data_sizes():
    reply = app(_message(MessageType.QUERY, depth=1, server_round=0), _context(3)).content["metrics"]
    assert reply["client-id"] == 3 and reply["num-train"] > reply["num-test"] > 0


def test_evaluate_reports_the_full_cost_and_a_threshold_sweep():
    from fl_ee.client import depth_flops, model_spec
    from fl_ee.policies import SWEEP_THRESHOLDS

    m = app(_message(MessageType.EVALUATE, depth=3, server_round=1), _context(0)).content["metrics"]
    costs = depth_flops(model_spec(CFG), 3).exit_costs()
    assert m["full-flops"] == costs[-1] >= m["expected-flops"]
    assert len(m["sweep-accuracy"]) == len(m["sweep-flops"]) == len(SWEEP_THRESHOLDS)
    at = SWEEP_THRESHOLDS.index(CFG.exit_policy.threshold)  # the run's own threshold is on the grid
    assert m["sweep-accuracy"][at] == m["adaptive-accuracy"] and m["sweep-flops"][at] == m["expected-flops"]
    assert m["sweep-flops"][-1] == costs[0]  # normalised entropy <= 1: every sample leaves at exit 1
