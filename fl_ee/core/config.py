"""The run configuration: a TOML file plus dotted overrides, typed and validated once.

Every section is a frozen, strict pydantic model whose fields carry their type, range,
choices and one-line description. :func:`load_config` and :func:`config_from_dict`
validate (ints are accepted for floats; bools and strings are never numbers, and NaN and
infinity are refused everywhere) and report
the first problem as a :class:`UserError` naming the dotted key (``data.alpha``,
``tiers.1.depth``); :func:`config_from_saved` reads old run directories leniently.
``strategy.options`` and ``personalisation.options`` are dicts, so configs are not hashable.
"""

from __future__ import annotations

import dataclasses
import json
import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import tomli_w
import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from fl_ee.core.errors import UserError
from fl_ee.core.layout import CNN_BLOCKS, block_count, default_exits
from sims.devices import DEVICES

DEFAULT_PRESET = "quickstart"


MAX_ROUNDS = 100_000  # far beyond any federated study; a larger count is a typo, not a plan


class _Section(BaseModel):
    # allow_inf_nan=False: every float of every section (and of its lists) must be finite
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


SAVE_WEIGHTS = "save the weights with torch.save(model.state_dict(), PATH)"
NOT_TENSORS = "not a state-dict file fl-ee can read safely"
TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; its legacy pickle format


def weights_file_problem(path: str) -> str | None:
    """What makes ``path`` no ``model.weights`` file, from the file system and its first bytes alone (no torch).

    :func:`fl_ee.models.weights.read_state` reads the whole file safely later.
    """
    file = Path(path).expanduser()
    if not file.exists():
        return "no such file"
    try:
        with file.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if not head.startswith(TORCH_SAVE_MAGIC):
        return (f"{NOT_TENSORS} (it is not a torch.save file of tensors; fl-ee loads tensors only, never other "
                f"objects); {SAVE_WEIGHTS}")
    return None


def _rule(ok: bool, field: str, message: str) -> None:
    """A cross-field check; its error names ``field`` of the model being validated."""
    if not ok:
        raise PydanticCustomError("rule", "{message}", {"message": message, "field": field})


class DataConfig(_Section):
    """Which dataset, where it lives, and how it is split over clients."""

    name: Annotated[Literal["digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder"],
                    Field(description="the dataset (digits is built in and offline)")] = "digits"
    root: Annotated[str, Field(description="where torchvision datasets / image folders live")] = "data"
    download: Annotated[bool, Field(description="let torchvision download missing files")] = False
    num_clients: Annotated[int, Field(ge=1, description="simulated clients (one Flower node each)")] = 20
    partitioner: Annotated[Literal["iid", "dirichlet", "shards"],
                           Field(description="how labels are split")] = "dirichlet"
    alpha: Annotated[float, Field(gt=0, description="Dirichlet concentration")] = 0.5
    shards_per_client: Annotated[int, Field(ge=1, description="classes per client for shards")] = 2
    test_fraction: Annotated[float,
                             Field(gt=0, lt=1, description="share of each client's samples held out to test")] = 0.2
    augment: Annotated[bool, Field(description="random crop (pad 4) and horizontal flip of training batches")] = False
    unseen_fraction: Annotated[float, Field(
        ge=0, lt=1, description="share of clients, drawn by seed, held out of training altogether and evaluated "
                                "apart (unseen clients; at least one when > 0)")] = 0.0

    @model_validator(mode="after")
    def _a_client_trains(self) -> DataConfig:
        _rule(self.unseen_count < self.num_clients, "unseen_fraction",
              f"leaves no client to train: {self.unseen_count} of {self.num_clients} clients would be unseen; "
              "lower it so that at least one trains")
        return self

    @property
    def unseen_count(self) -> int:
        """Clients held out of training: ``max(1, round(unseen_fraction x num_clients))``, none at 0."""
        return max(1, round(self.unseen_fraction * self.num_clients)) if self.unseen_fraction else 0


EXIT_PLACEMENTS = ("auto", "even-flops")


class ModelConfig(_Section):
    """The early-exit network: a backbone of blocks, exits after some of them, a width and a norm."""

    backbone: Annotated[Literal["cnn", "resnet", "mobilenet_v2"], Field(description="the backbone network")] = "cnn"
    width: Annotated[int, Field(ge=1, description="the first stage's channels (cnn 16, ResNet 64, MobileNetV2 32 "
                                                  "in the standard networks)")] = 16
    layers: Annotated[list[int], Field(default_factory=lambda: [2, 2, 2, 2], min_length=1,
                                       description="ResNet blocks per group ([2,2,2,2]: ResNet-18)")]
    norm: Annotated[Literal["group", "batch", "static-batch", "none"], Field(
        description="the normalisation layers (static-batch: batch norm without running statistics, HeteroFL's)")
                    ] = "group"
    exit_head: Annotated[Literal["linear", "mlp", "conv"], Field(description="the classifier at each exit")] = "mlp"
    exits: Annotated[str | list[int], Field(description="auto, even-flops, or the blocks (1-based) an exit follows")
                     ] = "auto"
    num_exits: Annotated[int, Field(ge=1, description="exits placed by even-flops")] = 4
    weights: Annotated[str, Field(description="a state-dict file to start the global model from (empty: none)")] = ""

    @field_validator("weights")
    @classmethod
    def _weights_file(cls, value: str) -> str:
        if value and (problem := weights_file_problem(value)):
            raise PydanticCustomError("weights", "{message}", {"message": f"{value}: {problem}"})
        return value

    @field_validator("exits", mode="before")
    @classmethod
    def _exits_kind(cls, value: Any) -> Any:
        if value in EXIT_PLACEMENTS or isinstance(value, list) and all(type(v) is int for v in value):
            return value
        raise PydanticCustomError("exits", "{message}", {
            "message": f"expected auto, even-flops or a list of block numbers, got {value!r}"})

    @model_validator(mode="after")
    def _exits_fit_the_backbone(self) -> ModelConfig:
        _rule(all(n >= 1 for n in self.layers), "layers", f"every group needs at least one block, got {self.layers}")
        blocks = self.block_count
        if isinstance(self.exits, list):
            _rule(bool(self.exits), "exits", "must name at least one block")
            _rule(all(a < b for a, b in zip(self.exits, self.exits[1:])) and self.exits[0] >= 1, "exits",
                  f"block numbers must be increasing and >= 1, got {self.exits}")
            _rule(self.exits[-1] <= blocks, "exits",
                  f"block {self.exits[-1]} is past the backbone's {blocks} blocks ({self._described})")
        elif self.exits == "even-flops":
            _rule(self.num_exits <= blocks, "num_exits",
                  f"{self.num_exits} exits do not fit on the backbone's {blocks} blocks ({self._described})")
        return self

    @property
    def _described(self) -> str:
        return f"resnet with layers {self.layers}" if self.backbone == "resnet" else self.backbone

    @property
    def block_count(self) -> int:
        """The backbone's blocks."""
        return block_count(self.backbone, self.layers)

    @property
    def exit_count(self) -> int:
        """The network's exits, so the deepest depth a tier can hold."""
        if isinstance(self.exits, list):
            return len(self.exits)
        return self.num_exits if self.exits == "even-flops" else len(default_exits(self.backbone, self.layers))


class TrainingConfig(_Section):
    """Local training: the scheme, the loss of every step, and SGD."""

    scheme: Annotated[Literal["e2e", "ic-only"], Field(
        description="e2e: backbone and exits; ic-only: exits over a frozen backbone")] = "e2e"
    backbone_rounds: Annotated[int, Field(
        ge=0, description="ic-only: rounds 1..n train end to end before the backbone is frozen")] = 0
    local_epochs: Annotated[int, Field(ge=1, description="epochs of the shared step")] = 1
    batch_size: Annotated[int, Field(ge=1, description="SGD batch size")] = 32
    lr: Annotated[float, Field(gt=0, description="SGD learning rate")] = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1, description="SGD momentum")] = 0.9
    weight_decay: Annotated[float, Field(ge=0, description="SGD weight decay (L2) of every local step")] = 0.0
    clip_norm: Annotated[float, Field(
        ge=0, description="clip each local step's gradient to this L2 norm over all its tensors (0: off)")] = 0.0
    lr_schedule: Annotated[Literal["constant", "exp", "step", "cosine"], Field(
        description="the lr over rounds: constant, exp (x lr_decay each round), step (x lr_gamma after each "
                    "milestone) or cosine (to lr_min in the last round)")] = "constant"
    lr_decay: Annotated[float, Field(gt=0, le=1, description="exp: the lr's factor per round (DepthFL: 0.998)")] = 0.998
    lr_milestones: Annotated[list[int], Field(
        default_factory=list, description="step: the rounds after which the lr is multiplied by lr_gamma")]
    lr_gamma: Annotated[float, Field(gt=0, le=1, description="step: the lr's factor at each milestone")] = 0.1
    lr_min: Annotated[float, Field(ge=0, description="cosine: the lr of the last round")] = 0.0
    exit_weights: Annotated[list[float], Field(
        default_factory=list, description="weight of each exit's cross-entropy (empty: all 1)")]
    distillation: Annotated[Literal["last-exit", "mutual", "none"],
                            Field(description="last-exit: deepest exit teaches; mutual: all teach all")] = "last-exit"
    kd_temperature: Annotated[float, Field(gt=0, description="distillation temperature T (ScaleFL: 3)")] = 3.0
    kd_weight: Annotated[float, Field(ge=0, description="weight of the distillation term (ScaleFL's gamma)")] = 0.05
    kd_warmup_rounds: Annotated[int, Field(ge=0, description="distillation is off in rounds before this one")] = 0
    kd_schedule: Annotated[Literal["step", "ramp"], Field(
        description="step: full weight from the warm-up on; ramp: DepthFL's exp(-5(1-r/R)^2)")] = "step"
    kd_ramp_rounds: Annotated[int, Field(ge=1, description="R, the ramp's length in rounds")] = 10
    prox_mu: Annotated[float,
                       Field(ge=0, description="FedProx's mu: (mu/2)||w - w_global||^2 on the shared tensors")] = 0.0

    @model_validator(mode="after")
    def _scheme_fits(self) -> TrainingConfig:
        _rule(self.scheme == "ic-only" or self.backbone_rounds == 0, "backbone_rounds",
              "only with training.scheme = ic-only")
        _rule(all(w >= 0 for w in self.exit_weights), "exit_weights", "must all be >= 0")
        _rule(all(a < b for a, b in zip(self.lr_milestones, self.lr_milestones[1:]))
              and all(m >= 1 for m in self.lr_milestones), "lr_milestones",
              f"rounds must be increasing and >= 1, got {self.lr_milestones}")
        _rule(self.lr_schedule != "step" or bool(self.lr_milestones), "lr_milestones",
              "must name at least one round with lr_schedule = step, e.g. [100, 200]")
        _rule(self.lr_schedule != "cosine" or self.lr_min <= self.lr, "lr_min",
              f"must be at most training.lr ({self.lr:g}) with lr_schedule = cosine")
        return self


class PersonalisationConfig(_Section):
    """How each client personalises: heads kept on the client, fine-tuning before evaluation, or nothing."""

    mode: Annotated[str, Field(
        min_length=1,
        description="the client algorithm: exits (supervised personal heads), self-distill (heads taught by the "
                    "deepest exit), finetune (tune a copy before evaluating), none (the global model), a "
                    "personalised-FL baseline (fedper, lg-fedavg, fedrep, fedbabu, ditto, apfl), another "
                    "registered name (fl-ee list algorithms) or package.module:Class")] = "exits"
    epochs: Annotated[int, Field(ge=1, description="epochs of the personal step (or the fine-tuning) of exits, "
                                                  "self-distill and finetune (the baselines: their options)")] = 1
    labelled_fraction: Annotated[float, Field(
        ge=0, le=1, description="self-distill: share of local training samples whose label the personal step reads",
    )] = 1.0
    lr: Annotated[float, Field(
        ge=0, description="SGD learning rate of the personal step of exits and self-distill and of the fine-tuning of "
                          "finetune and fedbabu, the same in every round (0: the round's training lr, under "
                          "training.lr_schedule)")] = 0.0
    options: Annotated[dict[str, Any], Field(default_factory=dict,
                                             description="constructor arguments of the client algorithm")]

    @model_validator(mode="after")
    def _labels_only_for_self_distill(self) -> PersonalisationConfig:
        _rule(self.mode == "self-distill" or self.labelled_fraction == 1, "labelled_fraction",
              "only with personalisation.mode = self-distill")
        return self


class StrategyConfig(_Section):
    """Server aggregation: a registered name or ``package.module:Class``."""

    name: Annotated[str, Field(description="a registered strategy or package.module:Class")] = "depthfl"
    fraction_train: Annotated[float,
                              Field(gt=0, le=1, description="share of clients sampled to train each round")] = 1.0
    fraction_evaluate: Annotated[float, Field(
        ge=0, le=1, description="share of clients sampled to evaluate (0: none, the global model only)")] = 1.0
    final_evaluate_all: Annotated[bool, Field(
        description="after the last round every client evaluates the final model, so the summary's personalised "
                    "figures are the final model's on all clients and not a mix of earlier rounds' samples "
                    "(fraction_evaluate applies to the rounds before)")] = False
    options: Annotated[dict[str, Any], Field(default_factory=dict, description="constructor arguments of the strategy")]
    selection: Annotated[str, Field(
        description="who of the online clients trains: random, oort (Lai et al., OSDI 2021: statistical utility "
                    "x a speed penalty, with exploration), or package.module:Class "
                    "(strategies/selection.py)")] = "random"
    selection_options: Annotated[dict[str, Any], Field(default_factory=dict,
                                                       description="keyword arguments of the selection")]


class ExitPolicyConfig(_Section):
    """When a sample leaves the network early at inference time."""

    name: Annotated[Literal["entropy", "max-prob", "calibrated", "patience"],
                    Field(description="the early-exit rule")] = "patience"
    threshold: Annotated[float, Field(ge=0, le=1, description="the rule's fixed threshold t")] = 0.5
    patience: Annotated[int, Field(ge=1, description="patience's fixed number of agreeing exits")] = 2
    thresholds: Annotated[Literal["fixed", "budget", "accuracy"],
                          Field(description="how the threshold is chosen on the calibration split")] = "fixed"
    scope: Annotated[Literal["personal", "tier", "global"],
                     Field(description="thresholds chosen per client, per tier, or once for all")] = "global"
    flops_budget: Annotated[float, Field(gt=0, le=1, description="budget rule: FLOPs per sample / full submodel")] = 0.5
    max_drop: Annotated[float, Field(ge=0, le=1, description="accuracy rule: allowed drop vs the deepest exit")] = 0.01
    calibration_fraction: Annotated[float, Field(
        ge=0, lt=1, description="local train data held out to calibrate (0: calibrate on the train data)")] = 0.0


class SimulationConfig(_Section):
    """The virtual clock's straggler policy, optional real pacing, and Ray resources."""

    straggler_policy: Annotated[Literal["wait", "deadline", "overselect"],
                                Field(description="how slow clients are met")] = "wait"
    deadline_s: Annotated[float,
                          Field(ge=0, description="replies simulated to arrive later are discarded (0: unset)")] = 0.0
    overcommit: Annotated[float,
                          Field(ge=0, description="overselect samples ceil(k(1+overcommit)), keeps the first k")] = 0.3
    target_accuracy: Annotated[float, Field(ge=0, le=1, description="time-to-accuracy target (0: unset)")] = 0.0
    pace: Annotated[bool, Field(description="clients also sleep their simulated time")] = False
    time_scale: Annotated[float, Field(gt=0, description="factor on the paced sleep")] = 1.0
    client_cpus: Annotated[float, Field(gt=0, description="Ray CPUs (and torch threads) per client")] = 1.0
    client_gpus: Annotated[float, Field(ge=0, description="Ray GPUs per client")] = 0.0
    max_bad_rounds: Annotated[int,
                              Field(ge=1, description="stop (exit 3) after this many non-finite rounds in a row")] = 3
    ray_address: Annotated[str,
                           Field(description="empty: start a local Ray; auto or host:port: attach to a cluster")] = ""
    partial_work: Annotated[bool, Field(
        description="deadline: a client too slow for all its local steps is told how many fit before the deadline "
                    "and sends that partial work instead of being late (FedNova's normalisation, strategy.options."
                    "fednova, averages it correctly)")] = False
    availability_trace: Annotated[str, Field(
        description="a JSON file of client id -> online intervals [start_s, end_s] on the virtual clock "
                    "(sims/traces.py; a client not in it is always online): clients are sampled only while online and "
                    "drop when they go offline mid-round (async: a free slot waits for a client to come online, and a "
                    "client going offline before it finishes drops then); it replaces the tiers' availability "
                    "(empty: none)")] = ""
    capacity_trace: Annotated[str, Field(
        description="a JSON file of client id -> some of compute_gflops, download_mbps, upload_mbps (sims/traces.py), "
                    "which replace those clients' tier figures (and speed_sigma's draw) (empty: none)")] = ""
    mode: Annotated[Literal["sync", "async"], Field(
        description="sync: rounds of sampled clients; async: concurrency clients train at once and the server "
                    "aggregates every buffer_size arrivals on the virtual clock (FedBuff; rounds counts these "
                    "server versions)")] = "sync"
    concurrency: Annotated[int, Field(
        ge=1, description="async: clients training at once (at most the clients that may train)")] = 10
    buffer_size: Annotated[int, Field(
        ge=1, description="async: arrivals aggregated into one server version (FedBuff's K; 1 is FedAsync)")] = 10
    staleness: Annotated[Literal["constant", "polynomial", "hinge"], Field(
        description="async: weight of an update s versions old: constant 1, polynomial (1+s)^-staleness_a, or "
                    "hinge 1 for s <= staleness_b else 1/(staleness_a (s - staleness_b) + 1) (Xie et al. 2019)")] = \
        "polynomial"
    staleness_a: Annotated[float, Field(ge=0, description="async: the staleness function's a")] = 0.5
    staleness_b: Annotated[int, Field(ge=0, description="async: the hinge's b, in server versions")] = 4
    server_lr: Annotated[float, Field(
        gt=0, description="async: the factor on the staleness-weighted mean change a server version applies "
                                "(FedBuff's server learning rate, FedAsync's alpha)")] = 1.0

    @model_validator(mode="after")
    def _deadline_is_set(self) -> SimulationConfig:
        _rule(self.straggler_policy != "deadline" or self.deadline_s > 0, "deadline_s",
              "must be set (> 0) when straggler_policy is deadline")
        _rule(not self.partial_work or self.straggler_policy == "deadline", "partial_work",
              "needs straggler_policy = deadline (partial work is what fits before the deadline)")
        _rule(self.mode == "sync" or self.straggler_policy == "wait", "straggler_policy",
              "must be wait with mode = async (an async server waits for no round: it takes each arrival)")
        return self


class LoggingConfig(_Section):
    """Logs besides the run directory."""

    tensorboard: Annotated[bool, Field(
        description="write TensorBoard scalars under RUN_DIR/tensorboard (needs fl-ee[tensorboard])")] = False


class TierConfig(_Section):
    """A device tier: its share of clients, the depth and width they hold, and how fast they are."""

    name: Annotated[str, Field(min_length=1, description="the tier's name")]
    share: Annotated[float, Field(gt=0, le=1, description="share of the clients in this tier")]
    depth: Annotated[int, Field(description="stages (and exits) the tier's clients hold: 1..the model's exits")]
    width: Annotated[float, Field(gt=0, le=1, description="width ratio r: the tier's clients hold the first "
                                                          "ceil(r x channels) channels of every layer")] = 1.0
    preset: Annotated[str, Field(description="a device profile (sims/devices.py) that fills the fields not set")] = ""
    compute_gflops: Annotated[float, Field(gt=0, description="sustained training throughput")] = 20.0
    download_mbps: Annotated[float, Field(gt=0, description="download link speed")] = 30.0
    upload_mbps: Annotated[float, Field(gt=0, description="upload link speed")] = 10.0
    availability: Annotated[float, Field(ge=0, le=1, description="chance a sampled client is online")] = 1.0
    failure_rate: Annotated[float, Field(ge=0, le=1, description="chance a client drops out mid-round")] = 0.0
    speed_sigma: Annotated[float,
                           Field(ge=0, description="per-client compute-speed spread (lognormal, median 1)")] = 0.0
    training_w: Annotated[float, Field(gt=0, description="the device's power while it trains, W "
                                                         "(default: mid-range-phone's)")] = 3.5
    idle_w: Annotated[float, Field(ge=0, description="the device's power while awake and idle (during transfers), "
                                                     "W")] = 0.6
    radio_up_j_per_mb: Annotated[float,
                                 Field(ge=0, description="the radio's energy per MB sent, J (over idle)")] = 3.51
    radio_down_j_per_mb: Annotated[float,
                                   Field(ge=0, description="the radio's energy per MB received, J (over idle)")] = 0.42

    @model_validator(mode="before")
    @classmethod
    def _device_preset(cls, raw: Any) -> Any:
        name = raw.get("preset", "") if isinstance(raw, dict) else ""
        if not name or not isinstance(name, str):  # a wrong type is the field's own error
            return raw
        _rule(name in DEVICES, "preset", f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
        return {**dataclasses.asdict(DEVICES[name]), **raw}


class Config(_Section):
    """A whole run."""

    seed: Annotated[int, Field(
        ge=0, description="seeds the split, tiers, sampling, initial weights and local training")] = 0
    rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS, description="federated rounds")] = 10
    eval_every: Annotated[int, Field(ge=1, description="evaluate every n rounds (and always after the last)")] = 1
    checkpoint_every: Annotated[int,
                                Field(ge=1, description="save a checkpoint every n rounds (and after the last)")] = 1
    data: Annotated[DataConfig, Field(default_factory=DataConfig, description="the dataset and its split")]
    model: Annotated[ModelConfig, Field(default_factory=ModelConfig, description="the early-exit network")]
    training: Annotated[TrainingConfig, Field(default_factory=TrainingConfig, description="local training")]
    personalisation: Annotated[PersonalisationConfig,
                               Field(default_factory=PersonalisationConfig, description="personal exits")]
    strategy: Annotated[StrategyConfig, Field(default_factory=StrategyConfig, description="server aggregation")]
    exit_policy: Annotated[ExitPolicyConfig,
                           Field(default_factory=ExitPolicyConfig, description="early exit at inference")]
    simulation: Annotated[SimulationConfig,
                          Field(default_factory=SimulationConfig, description="clock, pacing and Ray")]
    logging: Annotated[LoggingConfig, Field(default_factory=LoggingConfig, description="optional logs")]
    tiers: Annotated[tuple[TierConfig, ...], Field(min_length=1, strict=False,  # strict=False: TOML gives lists
                                                   description="device tiers; shares sum to 1")] = (
        TierConfig(name="full", share=1.0, depth=CNN_BLOCKS),)  # the default model's exits; see below

    @model_validator(mode="before")
    @classmethod
    def _default_tier_holds_every_exit(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or "tiers" in raw:
            return raw
        try:
            model = ModelConfig.model_validate(raw.get("model", {}))
        except ValidationError:  # reported by the field itself
            return raw
        return {**raw, "tiers": [{"name": "full", "share": 1.0, "depth": model.exit_count}]}

    @model_validator(mode="after")
    def _tiers_fit_together(self) -> Config:
        exits = self.model.exit_count
        for i, tier in enumerate(self.tiers):
            _rule(1 <= tier.depth <= exits, f"tiers.{i}.depth", f"must be in 1..{exits} (the model has {exits} exits)")
        names = [tier.name for tier in self.tiers]
        _rule(len(set(names)) == len(names), "tiers", f"tier names must be unique, got {names}")
        total = sum(tier.share for tier in self.tiers)
        _rule(math.isclose(total, 1.0, abs_tol=1e-6), "tiers", f"shares must sum to 1, got {total:g}")
        _rule(self.exit_policy.patience <= exits, "exit_policy.patience",
              f"must be in 1..{exits} (the model has {exits} exits)")
        return self

    @model_validator(mode="after")
    def _training_fits_the_run(self) -> Config:
        t = self.training
        _rule(not t.exit_weights or len(t.exit_weights) == self.max_depth, "training.exit_weights",
              f"needs one weight per exit up to the deepest tier's depth ({self.max_depth}), got {len(t.exit_weights)}")
        if t.scheme == "ic-only":
            _rule(t.backbone_rounds >= 1 or bool(self.model.weights), "training.backbone_rounds",
                  "ic-only needs a backbone to freeze: set training.backbone_rounds >= 1 or model.weights")
            _rule(t.backbone_rounds < self.rounds, "training.backbone_rounds",
                  f"must be below rounds ({self.rounds}), or no round trains the exits alone")
        _rule(self.personalisation.mode != "self-distill" or t.kd_weight > 0, "training.kd_weight",
              "must be > 0 with personalisation.mode = self-distill (unlabelled samples learn from it alone)")
        return self

    @property
    def max_depth(self) -> int:
        """The deepest depth any tier holds."""
        return max(t.depth for t in self.tiers)

    @property
    def max_width(self) -> float:
        """The widest width ratio any tier holds."""
        return max(t.width for t in self.tiers)


# --------------------------------------------------------------------------- loading


def preset_path(name: str) -> Path:
    """The TOML file of a shipped preset (``quickstart``, ``fmnist-3tiers``, ...)."""
    return Path(str(resources.files("sims") / "presets" / f"{name}.toml"))


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is a :class:`UserError`."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory; give a TOML file or a preset name (fl-ee list presets)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: invalid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None


def resolve_config_path(spec: str | None) -> Path:
    """A config argument is a file path, or the name of a shipped preset."""
    if spec is None:
        return preset_path(DEFAULT_PRESET)
    path = Path(spec)
    if not path.exists() and "/" not in spec and not spec.endswith(".toml"):
        preset = preset_path(spec)
        if preset.exists():
            return preset
    return path


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML literal (``3``, ``0.5``, ``true``, ``"x"``) or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["data.alpha=0.1", ...]`` to ``{"data.alpha": 0.1, ...}``."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value")
        overrides[key.strip()] = parse_value(value.strip())
    return overrides


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``tiers.0.depth`` indexes the tier list) in a copy of ``raw``."""
    raw = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            here = ".".join(parts[: i + 1])
            if isinstance(node, list):
                node = node[_list_index(node, part, here)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise UserError("is not a table", key=here)
        if isinstance(node, list):
            node[_list_index(node, parts[-1], dotted)] = value
        else:
            node[parts[-1]] = value
    return raw


def _list_index(items: list[Any], part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise UserError(f"no entry {part!r} (there are {len(items)})", key=key)
    return int(part)


def load_config(spec: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a config file or preset, apply overrides, validate, and return it."""
    raw = read_toml(resolve_config_path(spec))
    return config_from_dict(apply_overrides(raw, overrides or {}))


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from plain values; the first problem is a :class:`UserError`."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise _user_error(exc.errors()[0]) from None


def config_from_saved(raw: dict[str, Any]) -> Config:
    """The config of an existing run directory, valid or not under today's rules.

    Values that no longer validate are kept as they are, unknown keys dropped and
    missing ones defaulted, so an old run directory can always be read.
    """
    try:
        return config_from_dict(raw)
    except UserError:
        return _construct(Config, raw)


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def resolve_paths(cfg: Config) -> Config:
    """Make ``data.root``, ``model.weights`` and the ``simulation`` traces absolute.

    So every process (Ray workers too) reads the same files.
    """
    model = cfg.model.model_copy(update={"weights": _absolute(cfg.model.weights)}) if cfg.model.weights else cfg.model
    sim = cfg.simulation
    simulation = sim.model_copy(update={key: _absolute(getattr(sim, key))
                                         for key in ("availability_trace", "capacity_trace") if getattr(sim, key)})
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": _absolute(cfg.data.root)}),
                                  "model": model, "simulation": simulation})


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain values (tiers as a list of tables), ready for TOML or JSON."""
    raw = config.model_dump()
    raw["tiers"] = list(raw["tiers"])
    return raw


def config_to_toml(config: Config) -> str:
    """The resolved config as TOML; loading it gives the same :class:`Config`."""
    return tomli_w.dumps(config_to_dict(config))


def config_to_json(config: Config) -> str:
    """The resolved config as canonical JSON (what clients receive)."""
    return json.dumps(config_to_dict(config), sort_keys=True)


# ------------------------------------------------------------------------ internals


def _construct(cls: type[BaseModel], raw: Any) -> Any:
    """``cls`` from ``raw`` without validation: known keys only, sections recursively."""
    raw = raw if isinstance(raw, dict) else {}
    values: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        if name not in raw:
            continue
        kind, value = info.annotation, raw[name]
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            value = _construct(kind, value)
        elif get_origin(kind) is tuple and isinstance(value, list):
            value = tuple(_construct(get_args(kind)[0], item) for item in value)
        values[name] = value
    return cls.model_construct(**values)


_MESSAGES = {"extra_forbidden": "unknown key", "missing": "missing", "string_too_short": "must not be empty",
             "tuple_type": "expected a non-empty array of tables", "too_short": "expected a non-empty array of tables"}
_TYPES = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str",
          "model_type": "a table", "dict_type": "a table"}
_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _user_error(error: ErrorDetails) -> UserError:
    """One pydantic error as a ``key: message`` line."""
    loc, ctx = [str(part) for part in error["loc"]], error.get("ctx", {})
    if "field" in ctx:  # a cross-field rule (_rule)
        return UserError(error["msg"], key=".".join([*loc, ctx["field"]]))
    kind = error["type"]
    if kind in _MESSAGES:
        message = _MESSAGES[kind]
    elif kind in _TYPES:
        message = f"expected {_TYPES[kind]}, got {error['input']!r}"
    elif kind == "literal_error":
        choices = get_args(_field_at(error["loc"]).annotation)
        message = f"unknown value {error['input']!r}; choose one of {', '.join(choices)}"
    elif kind == "finite_number":
        message = f"must be a finite number, got {error['input']!r}"
    elif kind in _BOUNDS:
        message = _range(_field_at(error["loc"]))
    else:
        message = error["msg"]
    return UserError(message, key=".".join(loc) or None)


def _field_at(loc: tuple[str | int, ...]) -> FieldInfo:
    """The field an error of a known field points at (list indices skipped)."""
    model: Any = Config
    for part in loc:
        if isinstance(part, str):
            info = model.model_fields[part]
            model = get_args(info.annotation)[0] if get_origin(info.annotation) is tuple else info.annotation
    return info


def _range(info: FieldInfo) -> str:
    """A field's whole allowed range: ``must be in 1..4``, ``must be in (0, 1]``, ``must be > 0``."""
    bounds = {name: getattr(m, name) for m in info.metadata for name in ("gt", "ge", "lt", "le") if hasattr(m, name)}
    low, high = bounds.get("gt", bounds.get("ge")), bounds.get("lt", bounds.get("le"))
    if high is None:
        return f"must be {'>' if 'gt' in bounds else '>='} {low}"
    if info.annotation is int and "ge" in bounds and "le" in bounds:
        return f"must be in {low}..{high}"
    return f"must be in {'(' if 'gt' in bounds else '['}{low}, {high}{')' if 'lt' in bounds else ']'}"
