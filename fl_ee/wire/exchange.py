"""Clients are virtual, nodes are a pool: how the round loop's messages reach the simulated nodes.

Flower's simulation runtime checks every node for new messages every 0.1 s, each check
scanning every stored message, so one node per client makes each round cost in the
number of *registered* clients. fl-ee runs a small pool of nodes instead
(:func:`sims.engine.pool_size`), and any node acts as any client:

* the strategy addresses each message to a client: its ``dst_node_id`` is the client
  id (the ``node_id`` of :class:`~strategies.ClientInfo`);
* :meth:`Exchange.send` puts it on a free node with the client's address
  (:class:`~fl_ee.wire.protocol.ClientAddress`) and the client's own state (its
  ``Context.state`` as its last successful call left it), at most one message per node
  in flight and the most work first, so the last client of a round is a short one;
* on the node, :func:`as_client` (a ClientApp mod) runs the handler in the client's own
  context (``node_config["partition-id"]`` is the client id), and sends the state it
  leaves back with the reply, the node's own partition id, and the id of the Ray node
  the call ran on (when it ran inside Ray);
* :meth:`Exchange.send` keeps that state for the client's next message (on disk, in
  Flower's wire format, so memory does not grow with the clients that have taken part)
  and returns the replies; each names its client in ``metadata.group_id`` (replies,
  error replies too, copy it from the message they answer);
* :meth:`Exchange.take_placement` tells on which Ray node each answered call ran
  (the run directory's ``placement.jsonl``).

Flower's runtime hands the waiting messages to its workers node by node, in the nodes'
partition-id order (``add_messages_to_queue`` in ``flwr/server/superlink/fleet/vce/vce_api.py``),
and the ServerApp sees only node ids; so the exchange learns each node's partition id
from its replies, and puts the costliest messages on the nodes handed out first: the
workers start on them first. Only the speed depends on it.

The asynchronous loop sends one message at a time as its clients start (:meth:`Exchange.post`)
and takes each reply when the virtual clock says it arrives (:meth:`Exchange.reply_of`);
:meth:`Exchange.send` first waits for those still in flight.

A client's results depend on its id, its data and its state, never on the node that
served it or on the order of the replies.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import NUM_PARTITIONS_KEY, PARTITION_ID_KEY
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto
from flwr.serverapp import Grid

from fl_ee.wire.cohort import is_cohort, pack, pack_replies, take, unpack, unpack_replies
from fl_ee.wire.protocol import CLIENT, NODE, RAY_NODE, STATE, ClientAddress, reports_errors

POLL_S = 0.005  # between pulls for replies (Flower's own grid waits 0.1 s)
# Flower's engine hands a node's message to a worker at its next check (every 0.1 s): with
# a few messages waiting per worker, calls as short as ~25 ms keep the workers busy, and
# the last messages of an exchange are still the cheapest (the costliest go out first)
NODES_PER_WORKER = 4  # the pool's nodes per Ray worker (sims.engine.pool_size)
COHORTS_PER_WORKER = 2  # the first messages of a long queue: cohorts a worker gets (fl_ee.wire.cohort.take)
NODE_WAIT_S = 120.0  # for the first simulated node to come up


Placement = dict[str, dict[str, list[int]]]  # message type -> Ray node id -> the clients it served


def client_of(message: Message) -> int:
    """The client a reply (or an outgoing message, once sent) belongs to."""
    return int(message.metadata.group_id)


def ray_node() -> str | None:
    """The id of the Ray node this process runs on (``ray.nodes()``'s ``NodeID``); ``None`` outside Ray."""
    if "ray" not in sys.modules:  # a process Ray runs in has imported it
        return None
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


class Exchange:
    """Sends the round loop's messages through a pool of nodes and keeps each client's state between calls.

    The states live in a temporary folder, one file per client, removed with the exchange.
    """

    def __init__(self, grid: Grid, num_clients: int) -> None:
        self.grid = grid
        self.num_clients = num_clients
        self._folder = tempfile.TemporaryDirectory(prefix="fl-ee-clients-")
        self._partition: dict[int, int] = {}  # node id -> the node's partition id, as its replies tell
        self._free: list[int] | None = None  # nodes with no message in flight (None: not asked yet)
        self._queue: list[Message] = []  # messages waiting for a free node, first first
        self._work: Callable[[Message], float] = _one  # what each queued message costs
        self._in_flight: dict[str, tuple[int, list[int]]] = {}  # message id -> node, the clients it carries
        self._arrived: dict[int, Message] = {}  # posted messages' replies by client, until asked for
        self._placement: Placement = {}  # where the calls answered since the last take_placement ran

    def _state_file(self, client: int) -> Path:
        return Path(self._folder.name) / f"{client}.pb"

    def state_of(self, client: int) -> RecordDict:
        """The client's own ``Context.state`` as its last successful call left it (empty before its first)."""
        path = self._state_file(client)
        if not path.exists():
            return RecordDict()
        proto = RecordDictProto()
        proto.ParseFromString(path.read_bytes())
        return recorddict_from_proto(proto)

    def _nodes(self) -> list[int]:
        deadline = time.monotonic() + NODE_WAIT_S
        while not (nodes := sorted(self.grid.get_node_ids())):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no simulated node came up in {NODE_WAIT_S:.0f}s")
            time.sleep(POLL_S)
        return nodes

    def _address(self, message: Message, node: int) -> None:
        """Re-address a message for client ``dst_node_id`` to ``node``, with the client's address and state."""
        client = message.metadata.dst_node_id
        message.metadata.group_id = str(client)
        message.metadata.dst_node_id = node
        message.content[CLIENT] = ClientAddress(client, self.num_clients).to_record()
        for key, record in self.state_of(client).items():
            message.content[STATE + key] = record

    def _keep_state(self, reply: Message, node: int) -> None:
        """Take the client's state, the partition id of the ``node`` that answered and its Ray node out of a reply.

        The state is kept for the client's next message, the rest for :meth:`_push` and
        :meth:`take_placement`. A failed call changes nothing.
        """
        if reply.has_error():
            return
        if NODE in reply.content:
            where = reply.content.config_records[NODE]
            if PARTITION_ID_KEY in where:
                self._partition[node] = int(where[PARTITION_ID_KEY])  # type: ignore[arg-type]
            if RAY_NODE in where:
                served = self._placement.setdefault(reply.metadata.message_type, {})
                served.setdefault(str(where[RAY_NODE]), []).append(client_of(reply))
            del reply.content[NODE]
        keys = [k for k in reply.content.keys() if k.startswith(STATE)]
        state = RecordDict({k.removeprefix(STATE): reply.content[k] for k in keys})
        self._state_file(client_of(reply)).write_bytes(recorddict_to_proto(state).SerializeToString())
        for key in keys:
            del reply.content[key]

    def send(self, messages: Iterable[Message], work: Callable[[Message], float] | None = None) -> list[Message]:
        """Send every message (addressed to a client id) and return the replies, in arrival order.

        ``work`` estimates a message's cost; the costliest go out first (ties in the
        given order), the first of a long queue in cohorts (:mod:`fl_ee.wire.cohort`).
        Messages the grid refuses get no reply, as with Flower's ``send_and_receive``.
        Messages :meth:`post` sent before are waited for first
        (their replies kept for :meth:`reply_of`), so every node is free.
        """
        self.drain()
        self._free = self._nodes()
        self._queue = sorted(messages, key=work, reverse=True) if work else list(messages)
        self._work = work or _one
        replies: list[Message] = []
        while self._queue or self._in_flight:
            replies += self._step()
        return replies

    def post(self, message: Message) -> None:
        """Send one message (addressed to a client id) as soon as a node is free; :meth:`reply_of` waits for its reply.

        The asynchronous server loop's way: messages go out as slots free, replies are taken in
        the order it asks for them, not in the order they come in.
        """
        if self._free is None:
            self._free = self._nodes()
        self._queue.append(message)
        self._work = _one
        self._push()

    def reply_of(self, client: int) -> Message:
        """The reply to the message :meth:`post` sent to ``client``, waited for; others' replies that come are kept."""
        while client not in self._arrived:
            if not self._queue and not self._in_flight:
                raise RuntimeError(f"no message to client {client} is in flight (the grid refused it?)")
            self._arrived |= {client_of(reply): reply for reply in self._step()}
        return self._arrived.pop(client)

    def take_placement(self) -> Placement:
        """Where the calls answered since the last take ran: by message type, each Ray node's clients (sorted).

        Empty where the nodes run outside Ray (an in-process grid).
        """
        placement, self._placement = self._placement, {}
        return {kind: {ray_id: sorted(clients) for ray_id, clients in sorted(by_node.items())}
                for kind, by_node in sorted(placement.items())}

    def drain(self) -> None:
        """Wait until every message :meth:`post` sent has its reply (kept for :meth:`reply_of`)."""
        while self._queue or self._in_flight:
            self._arrived |= {client_of(reply): reply for reply in self._step()}

    def _push(self) -> None:
        """Put queued messages (first first, in cohorts) on free nodes, those handed out first by the runtime first."""
        assert self._free is not None
        self._free.sort(key=lambda node: (self._partition.get(node, len(self._partition)), node), reverse=True)
        workers = max(1, (len(self._free) + len(self._in_flight)) // NODES_PER_WORKER)
        batch: list[tuple[Message, list[int]]] = []
        while self._queue and self._free:
            cohort, node = take(self._queue, COHORTS_PER_WORKER * workers, self._work), self._free.pop()
            for message in cohort:
                self._address(message, node)
            clients = [client_of(m) for m in cohort]
            batch.append((pack(cohort) if len(cohort) > 1 else cohort[0], clients))
        if batch:
            pushed = set(self.grid.push_messages([message for message, _ in batch]))
            for message, clients in batch:
                if message.metadata.message_id in pushed:
                    self._in_flight[message.metadata.message_id] = (message.metadata.dst_node_id, clients)
                else:
                    self._free.append(message.metadata.dst_node_id)

    def _step(self) -> list[Message]:
        """Push what fits, pull the replies that are in (keeping each client's state); wait a little if none is."""
        assert self._free is not None
        self._push()
        pulled = list(self.grid.pull_messages(list(self._in_flight))) if self._in_flight else []
        replies = []
        for reply in pulled:
            node, clients = self._in_flight.pop(reply.metadata.reply_to_message_id)
            self._free.append(node)
            for answer in unpack_replies(reply, clients) if len(clients) > 1 else [reply]:
                self._keep_state(answer, node)
                replies.append(answer)
        if not pulled and self._in_flight:
            time.sleep(POLL_S)
        return replies


def _one(message: Message) -> float:
    """Work of a message where none was estimated: all alike."""
    return 1.0


def as_client(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: handle ``message`` as the client it names, in that client's own context (a cohort's one by one).

    The node's context is left as it was; the state the handler leaves travels back
    with the reply (:class:`Exchange` keeps it for the client's next message), with
    the node's partition id and Ray node id, where known. A cohort (:mod:`fl_ee.wire.cohort`)
    gets one reply carrying each of its clients' replies, in order; a client whose call
    raises gets an error reply with the traceback, and the others go on.
    """
    if is_cohort(message):
        one = reports_errors(lambda part, ctx: _as_one(part, ctx, call_next))
        return pack_replies([one(part, context) for part in unpack(message)], message)
    return _as_one(message, context, call_next)


def _as_one(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """:func:`as_client` for one client's message."""
    address = ClientAddress.from_record(message.content.config_records[CLIENT])
    state_keys = [k for k in message.content.keys() if k.startswith(STATE)]
    state = RecordDict({k.removeprefix(STATE): message.content[k] for k in state_keys})
    for key in [CLIENT, *state_keys]:
        del message.content[key]
    own = Context(run_id=context.run_id, node_id=context.node_id,
                  node_config={PARTITION_ID_KEY: address.client_id, NUM_PARTITIONS_KEY: address.num_clients},
                  state=state, run_config=context.run_config)
    reply = call_next(message, own)
    if reply.has_content():
        for key, record in own.state.items():
            reply.content[STATE + key] = record
        where = ConfigRecord()
        if PARTITION_ID_KEY in context.node_config:  # Flower's simulation gives every node one
            where[PARTITION_ID_KEY] = context.node_config[PARTITION_ID_KEY]
        if (ray_id := ray_node()) is not None:
            where[RAY_NODE] = ray_id
        if where:
            reply.content[NODE] = where
    return reply
