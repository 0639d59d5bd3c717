"""The Flower ``ClientApp``: thin glue from messages to local training and evaluation.

Every message carries the resolved run config (JSON) and the client's depth; the
client's data split and personal exit heads are its own. Personal heads live in
``Context.state`` across rounds and are never sent.
"""

from __future__ import annotations

import copy
import functools
import json
import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_ee.config import Config, config_from_dict
from fl_ee.data import client_data, load_dataset, run_splits
from fl_ee.models import EarlyExitCNN, Flops, ModelSpec, measure_flops
from fl_ee.policies import SWEEP_THRESHOLDS, adaptive_inference
from fl_ee.seeding import derive_seed
from fl_ee.training import accuracy, exit_logits, for_round, local_loss, train_exits, train_joint

PERSONAL_KEY = "personal-exits"
INITIAL_LOSS = "initial-loss"  # config flag asking for, and metric reporting, the loss at the received weights
TRAIN_STREAM = 10  # seed stream for local training

app = ClientApp()


@functools.lru_cache(maxsize=4)
def run_config(text: str) -> Config:
    """The run config a message carries, parsed once per process."""
    return config_from_dict(json.loads(text))


@functools.lru_cache(maxsize=8)
def depth_flops(spec: ModelSpec, depth: int) -> Flops:
    """Per-block FLOPs of a depth-``depth`` network (measured once per process)."""
    return measure_flops(EarlyExitCNN(spec, depth))


def model_spec(cfg: Config) -> ModelSpec:
    """The network shape of this run."""
    return load_dataset(cfg.data).model_spec(cfg.model.width, cfg.model.exit_head)


def _setup(msg: Message, context: Context) -> tuple[Config, int, int, EarlyExitCNN]:
    """Parse the message: config, client id, round, and the received submodel."""
    config = msg.content["config"]
    cfg = run_config(str(config["run-config"]))
    torch.set_num_threads(max(1, int(cfg.simulation.client_cpus)))
    model = EarlyExitCNN(model_spec(cfg), int(config["depth"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return cfg, int(context.node_config["partition-id"]), int(config.get("server-round", 0)), model


def _personal_heads(model: EarlyExitCNN, context: Context) -> torch.nn.ModuleList:
    """The client's own exit heads: from its state, or copies of the global ones at first."""
    heads = copy.deepcopy(model.exits)
    if PERSONAL_KEY in context.state:
        heads.load_state_dict(context.state[PERSONAL_KEY].to_torch_state_dict())
    return heads


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report who this node is: its client id and local data sizes."""
    cfg = run_config(str(msg.content["config"]["run-config"]))
    client_id = int(context.node_config["partition-id"])
    split = run_splits(cfg)[client_id]  # sizes only: no need to gather the images
    metrics = MetricRecord({"client-id": client_id, "num-train": len(split.train), "num-test": len(split.test)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Personalise exits over the frozen received backbone, then train the shared tensors.

    When the message's config sets ``initial-loss`` (q-FFL does), it also reports the
    local objective at the received weights under that name; it costs a forward pass.
    """
    cfg, client_id, server_round, model = _setup(msg, context)
    x, y, _, _ = client_data(cfg, client_id)
    training = for_round(cfg.training, server_round)
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, TRAIN_STREAM, server_round, client_id))
    metrics: dict[str, int | float] = {"client-id": client_id, "num-examples": len(y)}
    if msg.content["config"].get(INITIAL_LOSS, False):
        metrics[INITIAL_LOSS] = local_loss(model, x, y, training)
    if cfg.personalisation.mode == "exits":
        heads = _personal_heads(model, context)
        metrics["personal-loss"] = train_exits(model, heads, x, y, training, cfg.personalisation.epochs, generator)
        context.state[PERSONAL_KEY] = ArrayRecord(heads.state_dict())
    metrics["train-loss"] = train_joint(model, x, y, training, generator)
    time.sleep(float(msg.content["config"].get("pace-s", 0.0)))  # real pacing, when asked for
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy per exit with the personal heads, and adaptive accuracy vs. FLOPs.

    ``sweep-accuracy`` / ``sweep-flops`` repeat the adaptive figures under the run's
    policy at each threshold of ``SWEEP_THRESHOLDS``; ``full-flops`` is the cost per
    sample of running the whole submodel.
    """
    cfg, client_id, _, model = _setup(msg, context)
    _, _, x, y = client_data(cfg, client_id)
    heads = _personal_heads(model, context) if cfg.personalisation.mode == "exits" else model.exits
    logits = exit_logits(model, x, heads)
    costs = depth_flops(model.spec, model.depth).exit_costs()
    policy = cfg.exit_policy.name
    adaptive = adaptive_inference(logits, y, costs, policy, cfg.exit_policy.threshold)
    sweep = [adaptive_inference(logits, y, costs, policy, t) for t in SWEEP_THRESHOLDS]
    metrics = MetricRecord(
        {
            "client-id": client_id,
            "num-examples": len(y),
            "accuracy": accuracy(logits[-1], y),
            "exit-accuracy": [accuracy(z, y) for z in logits],
            "adaptive-accuracy": adaptive.accuracy,
            "expected-flops": adaptive.expected_flops,
            "exit-fractions": list(adaptive.exit_fractions),
            "full-flops": float(costs[-1]),
            "sweep-accuracy": [r.accuracy for r in sweep],
            "sweep-flops": [r.expected_flops for r in sweep],
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
