"""``DepthAwareStrategy``: a Flower strategy that sends each client its tier's slice.

Sampling, messaging and aggregation are separate methods, as in Flower's own
strategies. A custom strategy overrides :meth:`DepthAwareStrategy.aggregate_tensor`
(one shared tensor at a time), :meth:`DepthAwareStrategy.train_pool` (who may train),
:meth:`DepthAwareStrategy.model_spec` (the network it trains), or Flower's
``configure_*``/``aggregate_*`` methods; its ``__init__`` keywords are its options,
checked with :func:`check_option`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import INFO
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fl_ee.core.plugins import OptionError as OptionError  # re-exported: part of the plug-in API
from fl_ee.core.plugins import check_option as check_option
from fl_ee.core.seeding import Stream, rng
from fl_ee.models import ModelSpec, narrow_state, slice_state, submodel_shapes
from fl_ee.wire.arrays import as_numpy, as_record
from fl_ee.wire.exchange import client_of
from fl_ee.wire.protocol import ARRAYS, METRICS, Instructions, TrainReply, instruction_message, payload_of, wire_key
from strategies.aggregation import buffered_update, fednova_rescale, holder_aggregate, weighted_mean

NUM_EXAMPLES = wire_key("num_examples")  # what replies are weighted by


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows of a simulated client; ``node_id`` addresses its messages (:mod:`fl_ee.wire.exchange`).

    ``depth`` and ``width`` (a ratio of the full network's channels) are its tier's submodel.
    """

    node_id: int
    client_id: int
    tier: str
    depth: int
    num_train: int
    num_test: int
    width: float = 1.0


def is_number(value: Any) -> bool:
    """A finite int or float option value (booleans, NaN and infinity are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and math.isfinite(value)


def _scalar(value: object) -> float:
    """A metric that must be a single number."""
    if not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as named NumPy arrays (:func:`~fl_ee.wire.arrays.as_numpy`)."""
    return {key: as_numpy(array) for key, array in record.items()}


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Named NumPy arrays as an ArrayRecord (order kept; 0-d arrays, such as BatchNorm's step count, stay 0-d)."""
    return as_record(arrays)


@dataclass(frozen=True)
class Feedback:
    """What one round says of a client that trained: its examples, its mean training loss, its simulated seconds."""

    client_id: int
    num_examples: int
    loss: float
    duration_s: float


def draw(seed: int, stream: Stream, server_round: int, pool: Sequence[ClientInfo], size: int) -> list[ClientInfo]:
    """``size`` clients of ``pool`` drawn uniformly without replacement, by seed, stream and round; in pool order."""
    chosen = rng(seed, stream, server_round).choice(len(pool), size=size, replace=False)
    return [pool[i] for i in sorted(chosen)]


class Selection:
    """Who of the online clients trains: the base of every client selection (:mod:`strategies.selection`).

    As it is, ``random``: uniformly by seed and round, every online client equally likely.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def select(self, server_round: int, pool: Sequence[ClientInfo], size: int) -> list[ClientInfo]:
        """``size`` clients of ``pool`` (the online ones, in client-id order; ``size <= len(pool)``), in that order."""
        return draw(self.seed, Stream.SAMPLE_TRAIN, server_round, pool, size)

    def feedback(self, server_round: int, results: Sequence[Feedback]) -> None:
        """Learn from a finished round: the clients whose update arrived (in time or late)."""

    def state_dict(self) -> dict[str, Any]:
        """What it keeps across rounds, as JSON values (empty: nothing)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint holds {sorted(state)}")


class DepthAwareStrategy(Strategy):
    """Per-tier slicing on the way out, per-tensor holder aggregation on the way back.

    Parameters
    ----------
    fraction_train, fraction_evaluate : float
        Fraction of clients sampled each round for training / evaluation (at least one).
    seed : int
        Seeds client sampling, so the same seed samples the same clients.
    overcommit : float
        Under the ``overselect`` straggler policy: training samples
        ``ceil(k * (1 + overcommit))`` clients, of which the first ``k`` to finish count.

    fednova : bool
        FedNova's normalisation (:func:`~strategies.aggregation.fednova_rescale`): each client's
        change is divided by the local steps it took (its reply's ``local_steps``) and the
        mean re-scaled by the example-weighted mean of the steps, so that clients that took
        fewer steps (partial work under a deadline, less data) are averaged correctly.

    ``partial_tensors`` says whether :meth:`aggregate_tensor` may be given part of a tensor
    (the elements that width-scaled holders share, as flat arrays): true for rules without
    state of their own, false for a rule that keeps state per whole tensor (the server
    optimisers, FedDyn) or reads whole tensors; with false, tiers cannot be width-scaled.
    """

    partial_tensors: ClassVar[bool] = True

    def __init__(
        self, fraction_train: float = 1.0, fraction_evaluate: float = 1.0, seed: int = 0, overcommit: float = 0.0,
        fednova: bool = False,
    ) -> None:
        check_option(isinstance(fednova, bool), "fednova", f"expected true or false, got {fednova!r}")
        self.fednova = fednova
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.seed = seed
        self.overcommit = overcommit
        self.clients: dict[int, ClientInfo] = {}
        self.spec: ModelSpec | None = None
        self._sent: ArrayRecord | None = None
        self.online: frozenset[int] | None = None  # who may be sampled to train this round (None: everyone)
        self.selection = Selection(seed)  # who of them trains (strategy.selection; strategies.registry sets it)
        self.evaluate_all_in: int | None = None  # the round every client evaluates (strategy.final_evaluate_all)

    # ------------------------------------------------------------------ model
    def model_spec(self, spec: ModelSpec) -> ModelSpec:
        """The network this strategy trains, from the one the config describes (default: that one)."""
        return spec

    # ------------------------------------------------------------------ clients
    def register_clients(self, clients: Iterable[ClientInfo], spec: ModelSpec | None = None) -> None:
        """Tell the strategy who is out there (node id, client id, tier, depth, width, sizes), and the network.

        ``spec`` (the network of :meth:`model_spec`) is needed to slice width-scaled submodels.
        """
        self.clients = {c.node_id: c for c in clients}
        self.spec = spec

    def train_pool(self) -> list[ClientInfo]:
        """The clients that may be sampled for training (all of them; override to restrict)."""
        return list(self.clients.values())

    def sample_size(self, fraction: float, pool_size: int | None = None) -> int:
        """``k = max(1, round(fraction * n))`` of ``n`` clients (default: all; 0 for fraction 0)."""
        n = len(self.clients) if pool_size is None else pool_size
        return min(n, max(1, round(fraction * n))) if fraction > 0 and n else 0

    def train_quota(self) -> int:
        """``k``: how many training updates a round asks for (the straggler policy keeps at most these)."""
        return self.sample_size(self.fraction_train, len(self.train_pool()))

    def sample(
        self,
        server_round: int,
        fraction: float,
        stream: Stream,
        pool: Iterable[ClientInfo] | None = None,
        overcommit: float = 0.0,
    ) -> list[ClientInfo]:
        """``ceil(k * (1 + overcommit))`` clients of ``pool`` (default: all), k as :meth:`sample_size`.

        Drawn by seed and round; returned in client-id order.
        """
        pool = sorted(self.clients.values() if pool is None else pool, key=lambda c: c.client_id)
        size = min(len(pool), math.ceil(self.sample_size(fraction, len(pool)) * (1 + overcommit)))
        return draw(self.seed, stream, server_round, pool, size)

    def sender(self, reply: Message) -> ClientInfo:
        """The client a reply came from (:func:`fl_ee.wire.exchange.client_of`)."""
        return self.clients[client_of(reply)]

    def recipient(self, message: Message) -> ClientInfo:
        """The client a message goes to (until :class:`fl_ee.wire.exchange.Exchange` places it on a node)."""
        return self.clients[message.metadata.dst_node_id]

    def client_slice(self, arrays: ArrayRecord, client: ClientInfo) -> ArrayRecord:
        """The part of ``arrays`` a client holds: the stages and exits of its depth, narrowed to its width."""
        if client.width == 1:
            return ArrayRecord(slice_state(arrays, client.depth))
        if self.spec is None:
            raise ValueError("width-scaled clients need the network: register_clients(clients, spec)")
        shapes = submodel_shapes(self.spec, client.depth, client.width)
        return to_record(narrow_state({key: as_numpy(arrays[key]) for key in shapes}, shapes))

    def messages(
        self, clients: Sequence[ClientInfo], arrays: ArrayRecord, config: ConfigRecord, message_type: str
    ) -> list[Message]:
        """One message per client: its slice (:meth:`client_slice`), and the round's instructions with its submodel.

        Clients of one depth and width get the same slice record (made once; nothing writes to it).
        The server sends unseen clients (``data.unseen_fraction``), which the strategy does not know, their
        evaluation with it too.
        """
        instructions = Instructions.from_record(config)
        slices: dict[tuple[int, float], ArrayRecord] = {}
        for c in clients:
            if (c.depth, c.width) not in slices:
                slices[c.depth, c.width] = self.client_slice(arrays, c)
        return [
            instruction_message(slices[c.depth, c.width], dataclasses.replace(instructions, depth=c.depth,
                                                                               width=c.width),
                                c.node_id, message_type)
            for c in clients
        ]

    # ------------------------------------------------------------------ training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients from :meth:`train_pool` and send each the stages and exits of its depth."""
        self._sent = arrays
        return self.messages(self.sample_train(server_round), arrays, config, MessageType.TRAIN)

    def sample_train(self, server_round: int) -> list[ClientInfo]:
        """The clients :meth:`configure_train` sends work to in ``server_round`` (over-selection included).

        Only :attr:`online` ones where the server set it (an availability trace on the virtual clock),
        as many as are online where fewer (k is a share of the whole pool), chosen by :attr:`selection`.
        """
        pool = sorted(self.train_pool(), key=lambda c: c.client_id)
        size = math.ceil(self.sample_size(self.fraction_train, len(pool)) * (1 + self.overcommit))
        online = [c for c in pool if self.online is None or c.client_id in self.online]
        return self.selection.select(server_round, online, min(size, len(online)))

    def valid_replies(self, replies: Iterable[Message]) -> list[Message]:
        """Replies without errors, in client-id order (so aggregation is deterministic)."""
        ok = [m for m in replies if not m.has_error()]
        return sorted(ok, key=lambda m: self.sender(m).client_id)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Combine each shared tensor over its holders with :meth:`aggregate_tensor`."""
        valid = self.valid_replies(replies)
        if not valid or self._sent is None:
            return None, None
        updates = [to_numpy(m.content.array_records[ARRAYS]) for m in valid]
        weights = [float(payload_of(m, TrainReply).num_examples) for m in valid]
        if self.fednova:
            updates = fednova_rescale(updates, weights, [self._steps(m) for m in valid], to_numpy(self._sent))
        new = holder_aggregate(updates, weights, to_numpy(self._sent), self.aggregate_tensor)
        return to_record(new), self._mean_metrics(valid)

    def aggregate_buffer(
        self, server_version: int, replies: Sequence[Message], starts: Sequence[Mapping[str, np.ndarray]],
        scales: Sequence[float], current: Mapping[str, np.ndarray],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Asynchronous mode's server step: FedBuff over the buffered ``replies``, with :meth:`aggregate_tensor`.

        Reply i's client trained from ``starts[i]`` (the version it started at); its change
        enters scaled by ``scales[i]`` (its staleness weight times the server learning rate),
        each tensor over the buffered clients that hold it
        (:func:`~strategies.aggregation.buffered_update`); ``current`` is the global state now.
        A strategy whose rule needs a whole round overrides :meth:`aggregate_train` and
        cannot run asynchronously unless it overrides this too.
        """
        if not replies:
            return None, None
        updates = [to_numpy(m.content.array_records[ARRAYS]) for m in replies]
        weights = [float(payload_of(m, TrainReply).num_examples) for m in replies]
        new = buffered_update(updates, starts, weights, scales, current, self.aggregate_tensor)
        return to_record(new), self._mean_metrics(replies)

    def _steps(self, reply: Message) -> int:
        """The local steps a reply's client took (FedNova needs them)."""
        steps = payload_of(reply, TrainReply).local_steps
        if not (isinstance(steps, int) and steps > 0):
            raise ValueError(f"client {self.sender(reply).client_id} reported no local_steps; fednova needs them")
        return steps

    def aggregate_tensor(
        self, key: str, values: Sequence[np.ndarray], weights: Sequence[float], current: np.ndarray
    ) -> np.ndarray:
        """The new value of one shared tensor from its holders' values and example counts.

        The default is the example-weighted mean; override this to plug in a rule. Where
        width-scaled holders hold parts of a tensor, it is called once per part, with flat
        arrays (:func:`~strategies.aggregation.region_aggregate`; see ``partial_tensors``).
        """
        return weighted_mean(values, weights)

    # ---------------------------------------------------------------- evaluation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients for evaluation (:meth:`evaluate_fraction`) and send each its depth's slice of the model."""
        clients = self.sample(server_round, self.evaluate_fraction(server_round), Stream.SAMPLE_EVALUATE)
        return self.messages(clients, arrays, config, MessageType.EVALUATE)

    def evaluate_fraction(self, server_round: int) -> float:
        """The share of clients that evaluate in ``server_round``: all in :attr:`evaluate_all_in`, else the fraction."""
        return 1.0 if server_round == self.evaluate_all_in else self.fraction_evaluate

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted means of the clients' scalar metrics."""
        valid = self.valid_replies(replies)
        return self._mean_metrics(valid) if valid else None

    @staticmethod
    def _mean_metrics(replies: Sequence[Message]) -> MetricRecord:
        records = [m.content.metric_records[METRICS] for m in replies]
        weights = [_scalar(r[NUM_EXAMPLES]) for r in records]
        scalars = [k for k, v in records[0].items() if isinstance(v, float)]
        out: dict[str, int | float | list[int] | list[float]] = {
            k: float(weighted_mean([np.array(_scalar(r[k])) for r in records], weights)) for k in scalars
        }
        out[NUM_EXAMPLES] = int(sum(weights))
        return MetricRecord(out)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The state the strategy carries from one round to the next, for checkpoints.

        A flat mapping from names to NumPy arrays or JSON values (numbers, strings,
        booleans, ``None``, lists and dicts of them); arrays are saved with NumPy and the
        rest as JSON, never pickled. :meth:`load_state_dict` of a freshly built strategy of
        the same options must bring it back exactly, so that a resumed run continues as an
        uninterrupted one. The default is empty: a strategy that keeps nothing across
        rounds needs neither method.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (arrays come back as NumPy arrays)."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint holds {sorted(state)}")

    def summary(self) -> None:
        """Log the sampling settings."""
        log(INFO, "%s: fraction_train=%.2f fraction_evaluate=%.2f seed=%d",
            type(self).__name__, self.fraction_train, self.fraction_evaluate, self.seed)
