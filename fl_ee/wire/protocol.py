"""The wire protocol between the ServerApp and the ClientApp: every record key and payload, typed.

A message from the server carries the client's slice of the global model under
:data:`ARRAYS`, :class:`Instructions` under :data:`CONFIG`, and, on its way to a node,
the :class:`ClientAddress` under :data:`CLIENT` and the client's own state under keys
starting with :data:`STATE` (:mod:`fl_ee.wire.exchange`); a reply carries a
:class:`TrainReply` or :class:`EvaluateReply` under
:data:`METRICS` (and, after training, the updated shared tensors under :data:`ARRAYS`),
and, on its way back from a node, the client's state and the node's partition id and
Ray node id under :data:`NODE`.
Each payload field travels under its name with ``-`` for ``_`` (``num_examples`` is
``num-examples``); optional fields that are ``None`` are left out.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from fl_ee.core.config import Config, config_from_dict

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"  # RecordDict keys of every message
CLIENT = "client"  # the client a message is for (fl_ee.wire.exchange)
STATE = "state."  # prefix of the keys that carry the client's own Context.state to its node and back
NODE = "node"  # a reply's node: its partition id and Ray node id (fl_ee.wire.exchange)
RAY_NODE = "ray-node"  # in a reply's NODE record: the id of the Ray node the call ran on
CLIENT_STATE = "client-state"  # the client's own arrays in its Context.state (never aggregated)

P = TypeVar("P", bound="Payload")


def wire_key(field: str) -> str:
    """The record key a payload field travels under."""
    return field.replace("_", "-")


@dataclass(frozen=True)
class Payload:
    """A typed record: ``to_values`` for the wire, ``from_values`` back (lists come back as tuples)."""

    record_type: ClassVar[type[ConfigRecord] | type[MetricRecord]] = MetricRecord

    def to_record(self) -> Any:
        """The payload as the Flower record it travels in."""
        values = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                values[wire_key(f.name)] = list(value) if isinstance(value, tuple) else value
        return self.record_type(values)

    @classmethod
    def from_record(cls: type[P], record: ConfigRecord | MetricRecord) -> P:
        """The payload a record carries (fields it lacks take their defaults)."""
        values = {}
        for f in dataclasses.fields(cls):
            key = wire_key(f.name)
            if key in record:
                value = record[key]
                values[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


@dataclass(frozen=True)
class Instructions(Payload):
    """What the server tells a client in every message.

    ``run_config`` is the resolved run config as canonical JSON; ``depth`` and ``width``
    the client's submodel depth and width ratio (set per client by the strategy);
    ``want_initial_loss`` asks for the local objective at the received weights (q-FFL
    needs it); ``pace_s`` is how long a
    paced client sleeps after training; ``state_dir`` is the folder where the client
    saves its state (personal exits, FedDyn's ``g_prev``) each round it trains, and reads
    it back in a fresh process (a resumed run; :mod:`fl_ee.federation.clientstate`);
    empty: keep it in memory only.
    ``lr`` is the round's learning rate (:func:`fl_ee.learning.schedule.round_lr`), which
    every local step of the round trains at; ``None``: the config's ``training.lr``.
    ``max_steps`` is how many SGD steps the shared step may take (partial work under a
    deadline, ``simulation.partial_work``); ``None``: all of them.
    """

    record_type: ClassVar[type[ConfigRecord]] = ConfigRecord

    run_config: str
    server_round: int = 0
    depth: int = 0
    want_initial_loss: bool = False
    pace_s: float = 0.0
    state_dir: str = ""
    lr: float | None = None
    width: float = 1.0
    max_steps: int | None = None

    @property
    def config(self) -> Config:
        """The run config, parsed once per process."""
        return _parse_config(self.run_config)


@functools.lru_cache(maxsize=4)
def _parse_config(text: str) -> Config:
    return config_from_dict(json.loads(text))


@dataclass(frozen=True)
class TrainReply(Payload):
    """The metrics of a client's training round; its shared tensors travel beside them.

    ``personal_loss`` is ``None`` without personal exits, ``initial_loss`` unless asked for;
    ``local_steps`` the SGD steps its shared step took (FedNova's tau;
    :func:`fl_ee.learning.training.local_steps`).
    """

    client_id: int
    num_examples: int
    train_loss: float
    personal_loss: float | None = None
    initial_loss: float | None = None
    local_steps: int | None = None


@dataclass(frozen=True)
class PolicyReport:
    """What a client measures about exit policies (:func:`fl_ee.deployment.deploy.policy_figures`), as it travels.

    ``exit_flops``: FLOPs per sample to leave at each exit. Curves: for each policy of
    :data:`fl_ee.deployment.deploy.POLICIES`, the accuracy then the FLOPs per sample at each
    point of its grid, on the calibration and on the test split. ``fraction_curve``: the
    configured policy's exit shares at each grid point (grid-major). ``reliability``: the
    bins of :func:`~fl_ee.deployment.calibration.reliability_bins` before then after temperature
    scaling.
    """

    exit_flops: tuple[float, ...]
    calib_examples: int
    calib_accuracy: float
    calib_curves: tuple[float, ...]
    test_curves: tuple[float, ...]
    fraction_curve: tuple[float, ...]
    temperatures: tuple[float, ...]
    ece: tuple[float, ...]
    ece_calibrated: tuple[float, ...]
    reliability: tuple[float, ...]
    overthinking: float


@dataclass(frozen=True)
class EvaluateReply(PolicyReport, Payload):
    """A client's evaluation with its personal exits on its local test split.

    Per exit it holds: ``exit_accuracy`` and ``exit_fractions`` (share of samples leaving
    there under the exit policy); ``adaptive_accuracy`` and ``expected_flops`` (per
    sample) under the policy; ``full_flops`` per sample of its whole submodel; and
    ``ensemble_accuracy``, the accuracy of the mean of its exits' softmax outputs
    (``None`` only in checkpoints written before it existed). The fields of
    :class:`PolicyReport` hold every policy's curves on the calibration and test splits,
    temperatures, ECE, reliability bins and overthinking. The server replaces the
    adaptive figures by those at the thresholds of the configured scope
    (:func:`fl_ee.deployment.deploy.deployed`).
    """

    client_id: int
    num_examples: int
    accuracy: float
    exit_accuracy: tuple[float, ...]
    adaptive_accuracy: float
    expected_flops: float
    exit_fractions: tuple[float, ...]
    full_flops: float
    ensemble_accuracy: float | None = None


@dataclass(frozen=True)
class ClientAddress(Payload):
    """The client a message is for: the node that gets it runs the ClientApp as this client."""

    record_type: ClassVar[type[ConfigRecord]] = ConfigRecord

    client_id: int
    num_clients: int


# ----------------------------------------------------------------------------- messages


def instructions_of(message: Message) -> Instructions:
    """The instructions a server message carries."""
    return Instructions.from_record(message.content.config_records[CONFIG])


def with_instructions(message: Message, instructions: Instructions) -> None:
    """Replace the instructions of an outgoing message."""
    message.content[CONFIG] = instructions.to_record()


def instruction_message(arrays: ArrayRecord, instructions: Instructions, node_id: int, message_type: str) -> Message:
    """A message from the server: a model slice and the instructions for it."""
    content = RecordDict({ARRAYS: arrays, CONFIG: instructions.to_record()})
    return Message(content=content, dst_node_id=node_id, message_type=message_type)


def reply(to: Message, payload: Payload, arrays: ArrayRecord | None = None) -> Message:
    """A client's reply: the payload's metrics, and arrays where it sends tensors back."""
    content = RecordDict({METRICS: payload.to_record()})
    if arrays is not None:
        content[ARRAYS] = arrays
    return Message(content, reply_to=to)


def payload_of(message: Message, kind: type[P]) -> P:
    """The typed payload of a client's reply."""
    return kind.from_record(message.content.metric_records[METRICS])


Handler = Callable[[Message, Context], Message]


def reports_errors(handler: Handler) -> Handler:
    """Answer an exception with an error reply carrying its traceback, instead of raising.

    The server counts the client as failed and files the traceback in the run directory;
    nothing reaches Flower's logger (which would print it on the terminal).
    """

    @functools.wraps(handler)
    def guarded(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception:
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=traceback.format_exc()),
                           reply_to=msg)

    return guarded
