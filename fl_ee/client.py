"""The Flower ``ClientApp``: thin glue from messages to local training and evaluation.

Every message carries the resolved run config (JSON) and the client's depth; the
client's data split and personal exit heads are its own. A node acts as whichever
client a message names (:func:`fl_ee.exchange.as_client`), in that client's own context.
Personal heads live in the client's ``Context.state`` across rounds and are never
aggregated; where the instructions name a
``state_dir`` they are also saved there after every round the client trains, and a
fresh process (a resumed run) reads them back from it (:mod:`fl_ee.clientstate`).
"""

from __future__ import annotations

import copy
import functools
import time
import traceback
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fl_ee.clientstate import load_exits, save_exits
from fl_ee.config import Config
from fl_ee.data import client_data, load_dataset
from fl_ee.exchange import as_client
from fl_ee.models import EarlyExitCNN, Flops, ModelSpec, measure_flops
from fl_ee.policies import SWEEP_THRESHOLDS, adaptive_inference
from fl_ee.protocol import (
    ARRAYS,
    PERSONAL_EXITS,
    EvaluateReply,
    Instructions,
    TrainReply,
    instructions_of,
    reply,
)
from fl_ee.seeding import Stream, derive_seed
from fl_ee.training import accuracy, exit_logits, for_round, local_loss, train_exits, train_joint

app = ClientApp(mods=[as_client])

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


@functools.lru_cache(maxsize=8)
def depth_flops(spec: ModelSpec, depth: int) -> Flops:
    """Per-block FLOPs of a depth-``depth`` network (measured once per process)."""
    return measure_flops(EarlyExitCNN(spec, depth))


def model_spec(cfg: Config) -> ModelSpec:
    """The network shape of this run."""
    return load_dataset(cfg.data).model_spec(cfg.model.width, cfg.model.exit_head)


def client_id_of(context: Context) -> int:
    """The client (partition) this call simulates."""
    return int(context.node_config["partition-id"])


def _setup(msg: Message) -> tuple[Instructions, Config, EarlyExitCNN]:
    """Parse the message: its instructions, the run config, and the received submodel."""
    instructions = instructions_of(msg)
    cfg = instructions.config
    torch.set_num_threads(max(1, int(cfg.simulation.client_cpus)))
    model = EarlyExitCNN(model_spec(cfg), instructions.depth)
    model.load_state_dict(msg.content.array_records[ARRAYS].to_torch_state_dict())
    return instructions, cfg, model


def _personal_heads(
    model: EarlyExitCNN, context: Context, instructions: Instructions, through: int
) -> torch.nn.ModuleList:
    """The client's own exit heads: from its state, else saved in a round ``<= through``, else the global ones.

    Saved heads are read only by a process that holds none in its state (a resumed run).
    """
    heads = copy.deepcopy(model.exits)
    if PERSONAL_EXITS in context.state:
        heads.load_state_dict(context.state.array_records[PERSONAL_EXITS].to_torch_state_dict())
    elif instructions.state_dir:
        saved = load_exits(instructions.state_dir, client_id_of(context), through)
        if saved is not None:
            heads.load_state_dict({k: torch.from_numpy(v) for k, v in saved.items()})
    return heads


@app.train()
@reports_errors
def train(msg: Message, context: Context) -> Message:
    """Personalise exits over the frozen received backbone, then train the shared tensors.

    When the instructions ask for it (q-FFL does), it also reports the local objective at
    the received weights; it costs a forward pass.
    """
    instructions, cfg, model = _setup(msg)
    client_id = client_id_of(context)
    x, y, _, _ = client_data(cfg, client_id)
    training = for_round(cfg.training, instructions.server_round)
    seed = derive_seed(cfg.seed, Stream.LOCAL_TRAINING, instructions.server_round, client_id)
    generator = torch.Generator().manual_seed(seed)
    initial_loss = local_loss(model, x, y, training) if instructions.want_initial_loss else None
    personal_loss, heads = None, None
    if cfg.personalisation.mode == "exits":
        heads = _personal_heads(model, context, instructions, through=instructions.server_round - 1)
        personal_loss = train_exits(model, heads, x, y, training, cfg.personalisation.epochs, generator)
        context.state[PERSONAL_EXITS] = ArrayRecord(heads.state_dict())
    train_loss = train_joint(model, x, y, training, generator)
    time.sleep(instructions.pace_s)  # real pacing, when asked for
    if heads is not None and instructions.state_dir:  # last, so a client that failed saves nothing
        save_exits(instructions.state_dir, client_id, instructions.server_round,
                   {k: v.numpy() for k, v in heads.state_dict().items()})
    metrics = TrainReply(client_id, len(y), train_loss, personal_loss, initial_loss)
    return reply(msg, metrics, ArrayRecord(model.state_dict()))


@app.evaluate()
@reports_errors
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy per exit with the personal heads, and adaptive accuracy vs. FLOPs."""
    instructions, cfg, model = _setup(msg)
    client_id = client_id_of(context)
    _, _, x, y = client_data(cfg, client_id)
    if cfg.personalisation.mode == "exits":
        heads = _personal_heads(model, context, instructions, through=instructions.server_round)
    else:
        heads = model.exits
    logits = exit_logits(model, x, heads)
    costs = depth_flops(model.spec, model.depth).exit_costs()
    policy = cfg.exit_policy.name
    adaptive = adaptive_inference(logits, y, costs, policy, cfg.exit_policy.threshold)
    sweep = [adaptive_inference(logits, y, costs, policy, t) for t in SWEEP_THRESHOLDS]
    metrics = EvaluateReply(
        client_id=client_id,
        num_examples=len(y),
        accuracy=accuracy(logits[-1], y),
        exit_accuracy=tuple(accuracy(z, y) for z in logits),
        adaptive_accuracy=adaptive.accuracy,
        expected_flops=adaptive.expected_flops,
        exit_fractions=adaptive.exit_fractions,
        full_flops=float(costs[-1]),
        sweep_accuracy=tuple(r.accuracy for r in sweep),
        sweep_flops=tuple(r.expected_flops for r in sweep),
    )
    return reply(msg, metrics)
