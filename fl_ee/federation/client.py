"""The Flower ``ClientApp``: thin glue from messages to the client algorithm's training and evaluation.

Every message carries the resolved run config (JSON) and the client's depth and width
ratio; the client's data split and state are its own. A client builds its submodel of that
depth and width (:mod:`fl_ee.models.width`) and loads the slice it received into it;
under ``strategy.name = "fjord"`` each step of its shared step trains a width drawn from
the tier widths up to its own (:mod:`fl_ee.learning.widths`). A node acts as whichever
client a message names (:func:`fl_ee.wire.exchange.as_client`), in that client's own context. What a
client does locally is its client algorithm's (``personalisation.mode``,
:mod:`fl_ee.learning.algorithm`); under ``strategy.name = "feddyn"`` its shared step
also carries FedDyn's client term (:mod:`fl_ee.learning.feddyn`). The client's state
(the arrays its algorithm keeps, and FedDyn's ``g_prev``) lives in its ``Context.state``
across rounds and is never aggregated; where the instructions name a ``state_dir`` it is
also saved there after every round the client trains, and a fresh process (a resumed
run) reads it back from there (:mod:`fl_ee.federation.clientstate`). Under
``training.scheme = ic-only`` a client returns only its exits once the backbone is
frozen (:mod:`fl_ee.learning.scheme`).
"""

from __future__ import annotations

import copy
import functools
import json
import time

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fl_ee.core.config import Config, config_from_dict, config_to_json
from fl_ee.core.seeding import Stream, derive_seed
from fl_ee.data.datasets import client_calibration, client_data, run_unseen
from fl_ee.deployment.deploy import policy_figures
from fl_ee.federation.clientstate import load_state, save_state
from fl_ee.learning.algorithm import (
    ClientAlgorithm,
    LocalEvaluation,
    LocalTraining,
    algorithm_class,
    build_algorithm,
    evaluation_model,
    newcomer_state,
    sent_state,
    train_round,
)
from fl_ee.learning.device import client_device
from fl_ee.learning.feddyn import FedDynTerm
from fl_ee.learning.scheme import backbone_frozen
from fl_ee.learning.training import accuracy, ensemble, exit_logits, for_round, local_loss, local_steps
from fl_ee.learning.widths import OrderedDropout
from fl_ee.models import EarlyExitNet, ModelSpec, build_model, submodel_flops
from fl_ee.wire.arrays import as_record, load_into
from fl_ee.wire.exchange import as_client
from fl_ee.wire.protocol import (
    ARRAYS,
    CLIENT_STATE,
    EvaluateReply,
    Instructions,
    TrainReply,
    instructions_of,
    reply,
    reports_errors,
)
from strategies.base import to_numpy, to_record
from strategies.feddyn import client_alpha
from strategies.fjord import client_dropout
from strategies.registry import network_spec

app = ClientApp(mods=[as_client])


def model_spec(cfg: Config) -> ModelSpec:
    """The network shape of this run, as its strategy trains it (:func:`strategies.network_spec`), once per config."""
    return _network(config_to_json(cfg))


@functools.lru_cache(maxsize=8)
def _network(run_config: str) -> ModelSpec:
    return network_spec(config_from_dict(json.loads(run_config)))


@functools.lru_cache(maxsize=32)
def _dropout(run_config: str, width: float) -> OrderedDropout | None:
    """FjORD's ordered dropout for a client of ``width`` under this run config (none for other strategies)."""
    return client_dropout(config_from_dict(json.loads(run_config)), width)


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
    device = client_device(cfg.simulation.client_gpus)
    model, tensors = _built(instructions.run_config, instructions.depth, instructions.width, device)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
        parameter.grad = None
    load_into(tensors, msg.content.array_records[ARRAYS])
    return instructions, cfg, model, device


@functools.lru_cache(maxsize=16)
def _built(run_config: str, depth: int, width: float,
           device: torch.device) -> tuple[EarlyExitNet, dict[str, torch.Tensor]]:
    """The submodel of a depth and width on ``device``, kept per process, and its state's tensors by name.

    Built once per process, shape and device (building took a millisecond a call, as long as
    a small client's SGD step): a call makes every parameter trainable with no gradient and
    loads the weights it received into all of the state (strictly, :func:`~fl_ee.wire.arrays.load_into`);
    no call keeps it.
    """
    model = build_model(_network(run_config), depth, width).to(device)
    return model, model.state_dict(keep_vars=True)


@functools.lru_cache(maxsize=8)
def _client_side(run_config: str) -> tuple[type[ClientAlgorithm], float, frozenset[int]]:
    """A run config's client algorithm class, FedDyn's alpha (0: none) and unseen clients, resolved once per process."""
    cfg = config_from_dict(json.loads(run_config))
    return algorithm_class(cfg.personalisation.mode), client_alpha(cfg), run_unseen(cfg)


def _client_state(context: Context, instructions: Instructions, through: int) -> dict[str, torch.Tensor]:
    """The client's state: from its ``Context.state``, else saved in a round ``<= through``, else empty.

    Saved state is read only by a process that holds none in its context (a resumed run).
    """
    if CLIENT_STATE in context.state:
        arrays = to_numpy(context.state.array_records[CLIENT_STATE])
    elif instructions.state_dir:
        arrays = load_state(instructions.state_dir, client_id_of(context), through) or {}
    else:
        arrays = {}
    return {key: torch.from_numpy(value) for key, value in arrays.items()}


@app.train()
@reports_errors
def train(msg: Message, context: Context) -> Message:
    """Run the client algorithm's training round; send the shared tensors it picks, keep the state.

    The shared step trains backbone and exits end to end, or only the exits once
    ``ic-only`` froze the backbone (then only the exits go back); of those, the algorithm's
    ``sent`` picks what goes back (all by default). When the instructions
    ask for it (q-FFL does), it also reports the local objective at the received
    weights; it costs a forward pass.
    """
    instructions, cfg, model, device = _setup(msg)
    client_id, rnd = client_id_of(context), instructions.server_round
    x, y, _, _ = client_data(cfg, client_id)
    x, y = x.to(device), y.to(device)
    training = for_round(cfg.training, rnd)
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, Stream.LOCAL_TRAINING, rnd, client_id))
    initial_loss = local_loss(model, x, y, training) if instructions.want_initial_loss else None
    frozen = backbone_frozen(cfg.training, rnd)
    state = _client_state(context, instructions, through=rnd - 1)
    cls, alpha, _ = _client_side(instructions.run_config)
    dyn = FedDynTerm(alpha, model, state) if alpha > 0 else None
    local = LocalTraining(model, x, y, rnd, client_id, generator, training, frozen, state, cfg,
                          dyn.penalty if dyn else None, _dropout(instructions.run_config, instructions.width),
                          instructions.max_steps)
    algorithm = build_algorithm(cfg, cls)
    losses, kept = train_round(algorithm, local)
    if dyn is not None:
        kept |= {key: value.cpu().numpy() for key, value in dyn.state(model).items()}
    if kept:
        context.state[CLIENT_STATE] = to_record(kept)
    if instructions.pace_s > 0:  # real pacing, when asked for
        time.sleep(instructions.pace_s)
    if kept and instructions.state_dir:  # last, so a client that failed saves nothing
        save_state(instructions.state_dir, client_id, rnd, kept)
    metrics = TrainReply(client_id, len(y), losses.train, losses.personal, initial_loss,
                         local_steps(len(y), training, instructions.max_steps))
    return reply(msg, metrics, as_record(sent_state(algorithm, model.state_dict(), model.depth, frozen)))


@app.evaluate()
@reports_errors
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy per exit and of their ensemble, of what the client algorithm evaluates, and adaptive accuracy vs. FLOPs.

    The shipped modes evaluate personal heads over the received backbone (``exits``,
    ``self-distill``), a fine-tuned copy of the received submodel (``finetune``: neither
    kept nor sent), or the received model (``none``). An unseen client, which never
    trained, first builds the state it evaluates with in one training round on a copy of
    the received submodel (:func:`~fl_ee.learning.algorithm.newcomer_state`), and keeps none of it.
    """
    instructions, cfg, model, device = _setup(msg)
    client_id, rnd = client_id_of(context), instructions.server_round
    x_train, y_train, x, y = client_data(cfg, client_id)
    x_train, y_train = x_train.to(device), y_train.to(device)
    calib_x, calib_y = client_calibration(cfg, client_id)
    cls, _, unseen = _client_side(instructions.run_config)
    algorithm = build_algorithm(cfg, cls)
    training = for_round(cfg.training, rnd)
    if client_id in unseen:
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, Stream.LOCAL_TRAINING, rnd, client_id))
        state = newcomer_state(algorithm, LocalTraining(copy.deepcopy(model), x_train, y_train, rnd, client_id,
                                                        generator, training, backbone_frozen(cfg.training, rnd),
                                                        {}, cfg, dropout=_dropout(instructions.run_config,
                                                                                  instructions.width)))
    else:
        state = _client_state(context, instructions, through=rnd)
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, Stream.FINETUNE, rnd, client_id))
    local = LocalEvaluation(model, x_train, y_train, rnd, client_id, generator, training, state, cfg)
    model, heads = evaluation_model(algorithm, local)
    logits = [z.cpu() for z in exit_logits(model, x.to(device), heads)]
    costs = submodel_flops(model.spec, model.depth, model.width).exit_costs()
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
