"""An in-process Flower ``Grid``: the real ClientApp answers the server's messages in this process.

Test infrastructure for the server loop (``fl_ee.federation.server.run_federation`` and friends)
without Ray; the server's clients take turns on its nodes (``fl_ee.wire.exchange``). It
mirrors what Flower's simulation runtime does around a ClientApp call
(``flwr.server.superlink.fleet.vce``), so the server cannot tell the difference:

* nodes get random-looking 64-bit ids (seeded here), never their partition ids;
* each node has one persistent ``Context`` whose ``node_config`` holds ``partition-id``
  and ``num-partitions``; the ClientApp gets a copy of it, which replaces the stored one
  only when the call succeeds (as the Ray backend ships contexts to actors and back);
* messages and replies are copied on the way (Ray pickles them), so neither side can
  alias the other's arrays;
* an exception in the ClientApp becomes an error reply, ``Error(code=CLIENT_APP_RAISED_EXCEPTION)``
  with the reason the runtime writes, not a crash;
* replies come back in an order unrelated to the send order (reversed, or shuffled
  by ``seed``), so tests prove the server sorts what it receives.

Messages are delivered synchronously in ``push_messages``; ``pull_messages`` returns
(and forgets) the replies asked for. The grid also gives the process a task identity
(run id, SuperLink node id), as ``run_simulation`` does, so the server can build
``Message``\\ s; use it as a context manager to restore the previous identity afterwards.
"""

from __future__ import annotations

import functools
import json
import pickle
import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import cast
from uuid import UUID

from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException
from flwr.common.constant import NUM_PARTITIONS_KEY, PARTITION_ID_KEY, SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fl_ee.wire.cohort import COHORT, is_cohort

REVERSED = "reversed"
SHUFFLED = "shuffled"
NODES = 8  # the pool a run on a 2-core machine gets (sims.engine.pool_size)
# the quickstart preset, 2 rounds over 6 clients, each evaluated; one local and one personal epoch
TINY = ["rounds=2", "eval_every=1", "data.num_clients=6", "training.local_epochs=1", "training.batch_size=64",
        "personalisation.epochs=1"]


def sets(overrides: Iterable[str]) -> list[str]:
    """``key=value`` overrides as ``fl-ee``'s command line takes them: ``--set`` before each."""
    return [a for o in overrides for a in ("--set", o)]


def _copy(message: Message) -> Message:
    """A deep copy, as crossing a process boundary makes it."""
    return pickle.loads(pickle.dumps(message))


class InProcessGrid(Grid):
    """``num_nodes`` simulated nodes whose ClientApp runs in this process.

    ``client_app`` defaults to ``fl_ee.federation.client.app``; ``order`` is ``"reversed"`` or
    ``"shuffled"`` (seeded by ``seed``, which also draws the run and node ids).
    ``calls`` counts the clients called by message type (a cohort's each, :mod:`fl_ee.wire.cohort`),
    ``messages`` the messages delivered; ``errors`` keeps the exceptions raised.
    """

    def __init__(self, num_nodes: int, client_app: ClientApp | None = None, *, seed: int = 0,
                 order: str = SHUFFLED, run_config: dict | None = None) -> None:
        if order not in (REVERSED, SHUFFLED):
            raise ValueError(f"order must be {REVERSED!r} or {SHUFFLED!r}, not {order!r}")
        if client_app is None:
            from fl_ee.federation.client import app

            client_app = app
        self.client_app: ClientApp = client_app
        self.order = order
        self._rng = random.Random(seed)
        self._run = Run.create_empty(run_id=self._rng.getrandbits(64))
        node_ids: list[int] = []
        while len(node_ids) < num_nodes:  # distinct, and never 0 or the SuperLink's id
            if (node_id := self._rng.getrandbits(64)) not in {0, SUPERLINK_NODE_ID, *node_ids}:
                node_ids.append(node_id)
        self.contexts = {
            node_id: Context(run_id=self._run.run_id, node_id=node_id,
                             node_config={PARTITION_ID_KEY: i, NUM_PARTITIONS_KEY: num_nodes},
                             state=RecordDict(), run_config=dict(run_config or {}))
            for i, node_id in enumerate(node_ids)
        }
        self._replies: dict[str, Message] = {}
        self.calls: dict[str, int] = {}
        self.messages: dict[str, int] = {}
        self.errors: list[Exception] = []
        self._saved_identity = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, self._run.run_id, SUPERLINK_NODE_ID

    def __enter__(self) -> InProcessGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        """Give the process back the task identity it had before this grid."""
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = self._saved_identity

    # --- Grid ------------------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return Run(**vars(self._run))

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def node_of_partition(self, partition_id: int) -> int:
        """The node id holding ``partition_id``."""
        return next(n for n, c in self.contexts.items() if c.node_config[PARTITION_ID_KEY] == partition_id)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver each message to its node's ClientApp now; keep the reply for ``pull_messages``."""
        ids = []
        for message in messages:
            meta = message.metadata
            if meta.reply_to_message_id or meta.ttl <= 0 or meta.dst_node_id not in self.contexts:
                raise ValueError(f"invalid message for this grid: {meta}")
            message_id = self._new_id()
            meta.__dict__["_message_id"] = message_id
            self._replies[message_id] = self._deliver(_copy(message))
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies to ``message_ids`` that are in, out of send order; each is returned once."""
        replies = [self._replies.pop(i) for i in message_ids if i in self._replies]
        if self.order == REVERSED:
            replies.reverse()
        else:
            self._rng.shuffle(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))

    # --- the node side -----------------------------------------------------------------------------
    def _new_id(self) -> str:
        return str(UUID(int=self._rng.getrandbits(128), version=4))

    def _deliver(self, message: Message) -> Message:
        """Run the ClientApp on a copy of the node's context, as the simulation's worker does."""
        node_id = message.metadata.dst_node_id
        message.metadata.delivered_at = str(time.time())
        kind = message.metadata.message_type
        self.calls[kind] = self.calls.get(kind, 0) + (len(message.content[COHORT]["clients"])  # type: ignore[arg-type]
                                                      if is_cohort(message) else 1)
        self.messages[kind] = self.messages.get(kind, 0) + 1
        context = pickle.loads(pickle.dumps(self.contexts[node_id]))
        try:
            reply = self.client_app(message=message, context=context)
        except Exception as exc:  # the runtime wraps it (ray_actor) and answers with an Error
            self.errors.append(exc)
            wrapped = ClientAppException(str(exc))
            reason = str(type(wrapped)) + ":<'" + str(wrapped) + "'>"
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
        else:
            self.contexts[node_id] = context
        reply.metadata.__dict__["_message_id"] = self._new_id()
        return _copy(reply)


def run_inprocess(out, overrides=(), preset: str | None = None, *, seed: int = 0, order: str = SHUFFLED,
                  observers=(), checkpoints: bool = True, nodes: int = NODES,
                  client_app: ClientApp | None = None) -> tuple[InProcessGrid, dict]:
    """``fl-ee run [PRESET] --set ... --out OUT`` through an :class:`InProcessGrid`: (the grid, the summary).

    ``overrides`` are ``"key=value"`` strings; ``seed`` draws the grid's ids and reply order
    (the run's own seed is the config's); ``observers`` follow the run beside its run
    directory; ``checkpoints`` writes them (and the clients' state) as ``fl-ee run`` does;
    ``nodes`` is the grid's pool of nodes (the clients take turns on them); ``client_app`` the nodes' ClientApp
    (default: fl-ee's).
    """
    from fl_ee.core.config import load_config, parse_overrides
    from fl_ee.federation.checkpoint import Checkpoints
    from fl_ee.federation.preflight import preflight
    from fl_ee.federation.server import run_federation
    from fl_ee.results.rundir import RunDir

    cfg = preflight(load_config(preset, parse_overrides(list(overrides))))
    run_dir = RunDir.create(out)
    with InProcessGrid(nodes, client_app, seed=seed, order=order) as grid:
        summary = run_federation(grid, cfg, [run_dir, *observers], Checkpoints(out) if checkpoints else None)
    check_schema(run_dir.path)
    return grid, summary


def resume_inprocess(out, overrides=(), *, seed: int = 0, order: str = SHUFFLED) -> tuple[InProcessGrid, dict]:
    """``fl-ee resume OUT --set ...`` through a fresh :class:`InProcessGrid` (fresh nodes, no client state)."""
    from fl_ee.core.config import parse_overrides
    from fl_ee.federation.resume import prepare_resume
    from fl_ee.federation.server import run_federation

    resume = prepare_resume(out, parse_overrides(list(overrides)))
    with InProcessGrid(NODES, seed=seed, order=order) as grid:
        summary = run_federation(grid, resume.cfg, [resume.run_dir], resume.checkpoints)
    check_schema(resume.run_dir.path)
    return grid, summary


SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "reference" / "summary.schema.json"


@functools.cache
def _summary_validator():
    """A validator of the documented schema, the schema itself checked once a session (``jsonschema.validate``
    checks it again on every call: a sixth of a tiny run's time)."""
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)


def check_schema(run_dir) -> None:
    """Every summary an in-process run writes must match the documented schema: the JSON Schema file and its models."""
    from fl_ee.results.rundir import SUMMARY
    from fl_ee.results.schema import Summary

    text = (run_dir / SUMMARY).read_text()
    _summary_validator().validate(json.loads(text))
    Summary.model_validate_json(text)


def counting_app(fail: int | None = None, mods: Sequence[Callable[..., Message]] = ()) -> ClientApp:
    """A ClientApp that answers queries and training with its partition id, and counts its calls in its state.

    The partition ``fail`` raises instead.
    """
    app = ClientApp(mods=list(mods))

    def handle(msg: Message, context: Context) -> Message:
        partition = int(context.node_config[PARTITION_ID_KEY])
        if partition == fail:
            raise ValueError(f"partition {partition} is broken")
        calls = cast(int, context.state.metric_records["calls"]["n"]) + 1 if "calls" in context.state else 1
        context.state["calls"] = MetricRecord({"n": calls})
        return Message(RecordDict({"metrics": MetricRecord({"partition": partition, "calls": calls})}), reply_to=msg)

    app.query()(handle)
    app.train()(handle)
    return app
