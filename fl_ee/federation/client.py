"""The Flower ``ClientApp``: thin glue from messages to local training and evaluation.

Every message carries the resolved run config (JSON) and the client's depth; the
client's data split and personal exit heads are its own. A node acts as whichever
client a message names (:func:`fl_ee.wire.exchange.as_client`), in that client's own context.
Personal heads (modes ``exits`` and ``self-distill``, :mod:`fl_ee.learning.personal`) live in the
client's ``Context.state`` across rounds and are never aggregated; where the instructions
name a ``state_dir`` they are also saved there after every round the client trains, and
a fresh process (a resumed run) reads them back from it (:mod:`fl_ee.federation.clientstate`).
Under ``training.scheme = ic-only`` a client returns only its exits once the backbone is
frozen (:mod:`fl_ee.learning.scheme`).
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

from fl_ee.core.config import Config
from fl_ee.core.seeding import Stream, derive_seed
from fl_ee.data.datasets import client_calibration, client_data, load_dataset
from fl_ee.deployment.deploy import policy_figures
from fl_ee.federation.clientstate import load_exits, save_exits
from fl_ee.learning.device import client_device
from fl_ee.learning.personal import PERSONAL_HEADS, finetuned, personal_step
from fl_ee.learning.scheme import backbone_frozen, returned_state
from fl_ee.learning.training import (
    accuracy,
    ensemble,
    exit_logits,
    for_round,
    local_loss,
    stage_features,
    train_exits,
    train_joint,
)
from fl_ee.models import EarlyExitNet, Flops, ModelSpec, build_model, measure_flops
from fl_ee.wire.exchange import as_client
from fl_ee.wire.protocol import (
    ARRAYS,
    PERSONAL_EXITS,
    EvaluateReply,
    Instructions,
    TrainReply,
    instructions_of,
    reply,
)

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
    return measure_flops(build_model(spec, depth))


def model_spec(cfg: Config) -> ModelSpec:
    """The network shape of this run."""
    return load_dataset(cfg.data).model_spec(cfg.model)


def client_id_of(context: Context) -> int:
    """The client (partition) this call simulates."""
    return int(context.node_config["partition-id"])


def _setup(msg: Message) -> tuple[Instructions, Config, EarlyExitNet, torch.device]:
    """Parse the message: its instructions, the run config, the received submodel and the device it runs on.

    The config's ``training.lr`` is the round's learning rate the instructions carry, so
    the shared step, the personal step and fine-tuning all train at the server's value.
    """
    instructions = instructions_of(msg)
    cfg = instructions.config
    if instructions.lr is not None:
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"lr": instructions.lr})})
    torch.set_num_threads(max(1, int(cfg.simulation.client_cpus)))
    model = build_model(model_spec(cfg), instructions.depth)
    model.load_state_dict(msg.content.array_records[ARRAYS].to_torch_state_dict())
    device = client_device(cfg.simulation.client_gpus)
    return instructions, cfg, model.to(device), device


def _personal_heads(
    model: EarlyExitNet, context: Context, instructions: Instructions, through: int
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
    """Personalise heads over the frozen received backbone, then train the shared tensors.

    The shared step trains backbone and exits end to end, or only the exits once
    ``ic-only`` froze the backbone (then only the exits go back). Backbone features are
    computed once for every step that keeps the backbone frozen. When the instructions ask
    for it (q-FFL does), it also reports the local objective at the received weights; it
    costs a forward pass.
    """
    instructions, cfg, model, device = _setup(msg)
    client_id, rnd = client_id_of(context), instructions.server_round
    x, y, _, _ = client_data(cfg, client_id)
    x, y = x.to(device), y.to(device)
    training = for_round(cfg.training, rnd)
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, Stream.LOCAL_TRAINING, rnd, client_id))
    initial_loss = local_loss(model, x, y, training) if instructions.want_initial_loss else None
    frozen, personal = backbone_frozen(cfg.training, rnd), cfg.personalisation.mode in PERSONAL_HEADS
    features = stage_features(model, x) if frozen or personal else []
    personal_loss, heads = None, None
    if personal:
        heads = _personal_heads(model, context, instructions, through=rnd - 1)
        personal_loss = personal_step(cfg, rnd, client_id, heads, model.exits, features, y, generator)
        context.state[PERSONAL_EXITS] = ArrayRecord(heads.state_dict())
    if frozen:
        train_loss = train_exits(model.exits, features, y, training, training.local_epochs, generator, training.prox_mu)
    else:
        train_loss = train_joint(model, x, y, training, generator, augment=cfg.data.augment)
    time.sleep(instructions.pace_s)  # real pacing, when asked for
    if heads is not None and instructions.state_dir:  # last, so a client that failed saves nothing
        save_exits(instructions.state_dir, client_id, rnd, {k: v.cpu().numpy() for k, v in heads.state_dict().items()})
    metrics = TrainReply(client_id, len(y), train_loss, personal_loss, initial_loss)
    return reply(msg, metrics, ArrayRecord(returned_state(model.state_dict(), model.depth, frozen)))


@app.evaluate()
@reports_errors
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy per exit and of their ensemble as the mode personalises, and adaptive accuracy vs. FLOPs.

    Personal heads over the received backbone (``exits``, ``self-distill``), a fine-tuned
    copy of the received submodel (``finetune``: neither kept nor sent), or the received
    model (``none``).
    """
    instructions, cfg, model, device = _setup(msg)
    client_id, rnd, mode = client_id_of(context), instructions.server_round, cfg.personalisation.mode
    x_train, y_train, x, y = client_data(cfg, client_id)
    calib_x, calib_y = client_calibration(cfg, client_id)
    heads = _personal_heads(model, context, instructions, through=rnd) if mode in PERSONAL_HEADS else None
    if mode == "finetune":
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, Stream.FINETUNE, rnd, client_id))
        model = finetuned(model, x_train.to(device), y_train.to(device), for_round(cfg.training, rnd),
                          cfg.personalisation.epochs, generator)
    logits = [z.cpu() for z in exit_logits(model, x.to(device), heads)]
    costs = depth_flops(model.spec, model.depth).exit_costs()
    calib_logits = [z.cpu() for z in exit_logits(model, calib_x.to(device), heads)]
    policies = policy_figures(calib_logits, calib_y, logits, y, costs, cfg.exit_policy, cfg.max_depth)
    adaptive = policies.adaptive
    metrics = EvaluateReply(
        client_id=client_id,
        num_examples=len(y),
        accuracy=accuracy(logits[-1], y),
        exit_accuracy=tuple(accuracy(z, y) for z in logits),
        adaptive_accuracy=adaptive.accuracy,
        expected_flops=adaptive.expected_flops,
        exit_fractions=adaptive.exit_fractions,
        full_flops=float(costs[-1]),
        **policies.wire(),
        ensemble_accuracy=accuracy(ensemble(logits), y),
    )
    return reply(msg, metrics)
