"""``fl_ee.wire.exchange``: many clients on a few nodes, each in its own context, the costliest sent first."""

from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_ee.wire.cohort import COHORT, is_cohort
from fl_ee.wire.exchange import Exchange, as_client, client_of
from inprocess import InProcessGrid, counting_app


def _to(clients: list[int]) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=c, message_type=MessageType.TRAIN) for c in clients]


def test_clients_take_turns_on_the_nodes_each_with_its_own_state():
    with InProcessGrid(2, counting_app(mods=[as_client])) as grid:
        exchange = Exchange(grid, 5)
        first = exchange.send(_to([0, 1, 2, 3, 4]))
        second = exchange.send(_to([1, 3, 4]))
        assert sorted(client_of(m) for m in first) == [0, 1, 2, 3, 4]
        assert all(m.content["metrics"]["partition"] == client_of(m) for m in first + second)
        assert [m.content["metrics"]["calls"] for m in first] == [1] * 5
        assert [m.content["metrics"]["calls"] for m in second] == [2] * 3  # each client's own count
        assert [int(exchange.state_of(c)["calls"]["n"]) for c in range(5)] == [1, 2, 1, 2, 2]
        assert all(len(c.state) == 0 for c in grid.contexts.values())  # the nodes keep nothing
        assert all(set(m.content.keys()) == {"metrics"} for m in first + second)  # the state went to the exchange


def test_the_costliest_messages_go_out_first():
    order = []
    app = ClientApp(mods=[as_client])

    @app.train()
    def train(msg: Message, context) -> Message:
        order.append(int(context.node_config["partition-id"]))
        return Message(RecordDict({"metrics": MetricRecord({})}), reply_to=msg)

    work = {0: 1.0, 1: 5.0, 2: 3.0, 3: 5.0}
    with InProcessGrid(1, app) as grid:  # one node: calls run in the order sent
        Exchange(grid, 4).send(_to([0, 1, 2, 3]), work=lambda m: work[m.metadata.dst_node_id])
    assert order == [1, 3, 2, 0]  # ties keep the given order


def test_a_failed_call_names_its_client_and_leaves_its_state_as_it_was():
    with InProcessGrid(2, counting_app(fail=2, mods=[as_client])) as grid:
        exchange = Exchange(grid, 3)
        exchange.send(_to([0, 1]))
        replies = exchange.send(_to([0, 1, 2]))
        failed = [m for m in replies if m.has_error()]
        assert [client_of(m) for m in failed] == [2] and "partition 2 is broken" in failed[0].error.reason
        assert len(exchange.state_of(2)) == 0 and int(exchange.state_of(0)["calls"]["n"]) == 2


class _Logged(InProcessGrid):
    """Logs the partition id of the node each pushed message goes to, with the client it is for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.placed: list[tuple[int, int]] = []

    def push_messages(self, messages):
        messages = list(messages)
        self.placed += [(self.contexts[m.metadata.dst_node_id].node_config["partition-id"], client)
                        for m in messages for client in _clients(m)]
        return super().push_messages(messages)


def _clients(message: Message) -> list[int]:
    """The clients a pushed message carries: one, or a cohort's."""
    return list(message.content[COHORT]["clients"]) if is_cohort(message) else [client_of(message)]


def test_once_a_node_has_answered_the_costliest_message_goes_to_the_node_flower_hands_out_first():
    work = {0: 1.0, 1: 5.0, 2: 3.0, 3: 4.0}
    with _Logged(4, counting_app(mods=[as_client]), seed=5) as grid:
        exchange = Exchange(grid, 4)
        halving = {0: 1.0, 1: 0.5, 2: 0.25, 3: 0.125}  # each more than a slot's share of the rest: no cohorts
        first = exchange.send(_to([0, 1, 2, 3]), work=lambda m: halving[m.metadata.dst_node_id])
        # the nodes' partition ids are learnt from these replies
        assert all("node" not in m.content for m in first)  # and taken out of them
        grid.placed.clear()
        exchange.send(_to([0, 1, 2, 3]), work=lambda m: work[m.metadata.dst_node_id])
    assert grid.placed == [(0, 1), (1, 3), (2, 2), (3, 0)]  # partition 0 is the first node Flower scans


def _on_node(message: Message, context, call_next) -> Message:
    """ClientApp mod around ``as_client``: names the Ray node a call ran on after the node's partition id."""
    reply = call_next(message, context)
    for key in [k for k in reply.content.keys() if k.split("/")[-1] == "node"]:  # a cohort's reply has one a client
        reply.content[key]["ray-node"] = f"node-{context.node_config['partition-id']}"
    return reply


def test_each_answered_call_is_placed_on_the_node_that_ran_it_once():
    with _Logged(2, counting_app(mods=[_on_node, as_client])) as grid:
        exchange = Exchange(grid, 5)
        exchange.send(_to([0, 1, 2, 3, 4]))
        exchange.send([Message(RecordDict(), dst_node_id=c, message_type=MessageType.QUERY) for c in (4, 2)])
        placement = exchange.take_placement()
        assert exchange.take_placement() == {}  # each call is told once
    expected: dict[str, dict[str, list[int]]] = {}
    for kind, (partition, client) in zip(["train"] * 5 + ["query"] * 2, grid.placed, strict=True):
        expected.setdefault(kind, {}).setdefault(f"node-{partition}", []).append(client)
    assert placement == {kind: {node: sorted(clients) for node, clients in sorted(by_node.items())}
                         for kind, by_node in sorted(expected.items())}
    assert sorted(sum(placement["train"].values(), [])) == [0, 1, 2, 3, 4]
