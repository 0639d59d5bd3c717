"""``fl_ee.wire.cohort``: several clients in one message, each answered as on its own."""

import pickle

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fl_ee.wire.cohort import COHORT, pack, take, unpack, unpack_replies
from fl_ee.wire.exchange import Exchange, as_client, client_of
from inprocess import TINY, InProcessGrid, counting_app, run_inprocess


def _to(clients: list[int]) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=c, message_type=MessageType.TRAIN) for c in clients]


def test_cohorts_shrink_as_the_queue_empties():
    queue = list(range(50))
    sizes = []
    while queue:
        sizes.append(len(take(queue, 8, lambda m: 1.0)))  # type: ignore[arg-type]
    # 50/8 = 6.25 -> 6, 44/8 = 5.5 -> 5, 39/8 -> 4, 35/8 -> 4, 31/8 -> 3, 28/8 -> 3, 25/8 -> 3, 22/8 -> 2, ...
    assert sizes[:8] == [6, 5, 4, 4, 3, 3, 3, 2] and sizes[-8:] == [1] * 8 and sum(sizes) == 50


def test_a_cohort_fits_a_nodes_share_of_the_work_and_holds_at_least_one_message():
    work = [5.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    queue = list(range(6))
    cohorts = []
    while queue:
        cohorts.append(take(queue, 2, lambda m: work[m]))  # type: ignore[arg-type,index]
    # shares: 10/2 = 5 -> [0]; 5/2 = 2.5 -> [1, 2]; 3/2 = 1.5 -> [3]; 2/2 = 1 -> [4]; 1/2 -> [5] (one at least)
    assert cohorts == [[0], [1, 2], [3], [4], [5]]
    queue = list(range(4))
    assert [take(queue, 4, lambda m: 1.0) for _ in range(4)] == [[0], [1], [2], [3]]  # type: ignore[arg-type]


def test_a_cohort_carries_each_clients_records_and_shared_arrays_once(task_identity):
    arrays = ArrayRecord({"w": Array(np.arange(50_000, dtype=np.float32))})
    messages = []
    for client in (4, 7, 9):
        message = Message(RecordDict({"arrays": ArrayRecord(dict(arrays)),
                                      "config": ConfigRecord({"who": client})}), dst_node_id=3,
                          message_type=MessageType.TRAIN, group_id=str(client))
        messages.append(message)
    cohort = pickle.loads(pickle.dumps(pack(messages)))  # as Ray ships it
    assert list(cohort.content[COHORT]["clients"]) == [4, 7, 9] and cohort.metadata.dst_node_id == 3
    assert len(pickle.dumps(pack(messages))) < 1.1 * len(pickle.dumps(messages[0]))  # the model travels once
    parts = unpack(cohort)
    assert [client_of(p) for p in parts] == [4, 7, 9]
    assert [int(p.content["config"]["who"]) for p in parts] == [4, 7, 9]
    assert all(set(p.content.keys()) == {"arrays", "config"} for p in parts)
    assert all(np.array_equal(p.content["arrays"]["w"].numpy(), np.arange(50_000)) for p in parts)


def test_a_cohorts_error_is_each_of_its_clients_error(task_identity):
    cohort = pack([Message(RecordDict(), dst_node_id=3, message_type=MessageType.TRAIN, group_id=str(c))
                   for c in (4, 7)])
    cohort.metadata.__dict__["_message_id"] = "m1"
    from flwr.app import Error

    lost = Message(Error(code=7, reason="worker died"), reply_to=cohort)
    replies = unpack_replies(lost, [4, 7])
    assert [(client_of(r), r.error.code, r.error.reason) for r in replies] == [(4, 7, "worker died"),
                                                                              (7, 7, "worker died")]


def test_clients_share_a_node_in_cohorts_each_with_its_own_state_and_error():
    with InProcessGrid(2, counting_app(fail=5, mods=[as_client])) as grid:
        exchange = Exchange(grid, 12)
        first = exchange.send(_to(list(range(12))))
        messages = grid.messages["train"]
        second = exchange.send(_to(list(range(12))))
    assert messages < 12 and grid.calls["train"] == 24  # cohorts: 12 clients in fewer messages
    assert sorted(client_of(m) for m in first) == list(range(12))
    failed = [m for m in first + second if m.has_error()]
    assert {client_of(m) for m in failed} == {5} and all("partition 5 is broken" in m.error.reason for m in failed)
    ok = [m for m in second if not m.has_error()]
    assert all(m.content["metrics"]["partition"] == client_of(m) for m in ok)
    assert all(m.content["metrics"]["calls"] == 2 for m in ok)  # each client's own state went and came back
    assert len(exchange.state_of(5)) == 0 and all(set(m.content.keys()) == {"metrics"} for m in ok)


@pytest.mark.e2e
def test_a_run_in_cohorts_gives_the_results_of_a_run_one_client_a_call(tmp_path):
    alike = [*TINY, "data.num_clients=12", "data.partitioner=iid", "strategy.fraction_train=1.0"]  # equal work
    cohorts, _ = run_inprocess(tmp_path / "cohorts", alike, nodes=1)
    single, _ = run_inprocess(tmp_path / "single", alike, nodes=48)  # 24 slots for 12 clients: one a call
    assert sum(cohorts.messages.values()) < sum(cohorts.calls.values()) == sum(single.messages.values())
    for name in ("summary.json", "clients.csv"):
        assert (tmp_path / "cohorts" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
