"""The server loop (``fl_ee.federation.server``) with the real ClientApp through an in-process Grid, no Ray."""

import csv
import json

import pytest
from flwr.app import Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from fl_ee.core.config import load_config
from inprocess import REVERSED, TINY, InProcessGrid, counting_app, run_inprocess


def _queries(grid: InProcessGrid) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in grid.get_node_ids()]


# ------------------------------------------------------------------------------ the grid


def test_nodes_have_random_distinct_ids_and_flowers_node_config():
    with InProcessGrid(6, counting_app()) as grid:
        ids = grid.get_node_ids()
        assert len(set(ids)) == 6 and not set(ids) & set(range(7)) and max(ids) < 2**64
        configs = [grid.contexts[n].node_config for n in ids]
        assert configs == [{"partition-id": i, "num-partitions": 6} for i in range(6)]
    with InProcessGrid(6, counting_app()) as same, InProcessGrid(6, counting_app(), seed=1) as other:
        assert same.get_node_ids() == ids and other.get_node_ids() != ids  # seeded


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_replies_answer_their_messages_out_of_send_order(order):
    with InProcessGrid(8, counting_app(), order=order) as grid:
        messages = _queries(grid)
        replies = grid.send_and_receive(messages)
        sent = [m.metadata.message_id for m in messages]
        assert sorted(m.metadata.reply_to_message_id for m in replies) == sorted(sent)
        assert [m.metadata.reply_to_message_id for m in replies] != sent
        if order == REVERSED:
            assert [m.metadata.reply_to_message_id for m in replies] == sent[::-1]
        for reply in replies:
            source = reply.metadata.src_node_id
            assert reply.content["metrics"]["partition"] == grid.contexts[source].node_config["partition-id"]
            assert reply.metadata.dst_node_id == 1 and reply.metadata.run_id == grid.run.run_id


def test_context_state_persists_across_messages_and_push_pull_work_apart():
    with InProcessGrid(3, counting_app()) as grid:
        grid.send_and_receive(_queries(grid))
        ids = grid.push_messages(_queries(grid))
        first = grid.pull_messages(ids[:1])
        rest = grid.pull_messages(ids)
        assert len(first) == 1 and len(rest) == 2 and grid.pull_messages(ids) == []
        assert {int(m.content["metrics"]["calls"]) for m in first + rest} == {2}


def test_a_client_exception_becomes_an_error_reply_and_keeps_the_old_state():
    with InProcessGrid(4, counting_app(fail=2)) as grid:
        broken = grid.node_of_partition(2)
        replies = list(grid.send_and_receive(_queries(grid)))
        failed = [m for m in replies if m.has_error()]
        assert [m.metadata.src_node_id for m in failed] == [broken]
        assert failed[0].error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        assert "ClientAppException" in failed[0].error.reason and "partition 2 is broken" in failed[0].error.reason
        assert len(grid.contexts[broken].state) == 0 and len(grid.errors) == 1
        assert sum(not m.has_error() for m in replies) == 3


def test_messages_can_be_built_without_a_task_identity_fixture():
    with InProcessGrid(2, counting_app()) as grid:
        message = Message(RecordDict(), dst_node_id=grid.get_node_ids()[0], message_type=MessageType.QUERY)
        assert message.metadata.src_node_id == 1 and message.metadata.run_id == grid.run.run_id


# ---------------------------------------------------------------- the real server loop


def test_a_tiny_run_gives_a_sane_summary(tiny_run):
    grid, summary, out = tiny_run
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["seed"] == 0
    assert summary["clients"]["total"] == 6 and sum(summary["clients"]["by_tier"].values()) == 6
    personalised = summary["accuracy"]["personalised"]
    assert 0.2 < personalised["mean"] <= 1  # 10 classes: chance is 0.1
    assert set(personalised["by_tier"]) == {"iot", "phone", "laptop"}
    assert set(summary["accuracy"]["global"]["by_exit"]) == {"1", "2", "3", "4"}
    assert summary["virtual_time_s"] > 0
    # quickstart trains half the clients and evaluates all of them each round; nothing else is asked
    assert grid.calls == {"train": 6, "evaluate": 12} and grid.errors == []
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["evaluate"]["personalised"] == personalised


def test_clients_csv_rows_follow_client_ids_not_node_ids_or_reply_order(tiny_run):
    grid, _, out = tiny_run
    with open(out / "clients.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["client_id"]) for r in rows] == list(range(6))
    assert all(r["evaluated_round"] == "2" for r in rows)
    depth_of = {t.name: t.depth for t in load_config(None).tiers}
    assert all(int(r["depth"]) == depth_of[r["tier"]] for r in rows)


def test_nodes_keep_nothing_and_the_trained_clients_keep_their_personal_exits(tiny_run):
    grid, _, out = tiny_run
    trained = {c["client_id"] for r in map(json.loads, (out / "rounds.jsonl").read_text().splitlines())
               for c in r["clock"]["clients"] if c["outcome"] == "ok"}
    assert len(grid.contexts) == 3 and all(len(c.state) == 0 for c in grid.contexts.values())
    saved = {int(p.name) for p in (out / "checkpoint" / "clients").iterdir()}
    assert trained and saved == trained


@pytest.mark.e2e
def test_results_do_not_depend_on_nodes_or_reply_order(tiny_run, tmp_path):
    _, _, out = tiny_run
    again = tmp_path / "again"
    run_inprocess(again, TINY, seed=7, order=REVERSED, nodes=5)
    for name in ("summary.json", "clients.csv"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    strip = [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
             for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert strip == [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
                     for line in (again / "rounds.jsonl").read_text().splitlines()]


def test_the_grid_leaves_the_task_identity_as_it_found_it():
    from flwr.supercore.task_identity import TaskIdentity

    before = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    with InProcessGrid(2, counting_app()):
        assert TaskIdentity.node_id == 1
    assert (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id) == before
