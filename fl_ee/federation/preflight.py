"""The preflight: every check a run needs, before Ray starts and before a run directory exists.

``fl-ee run``, ``fl-ee check`` and the ServerApp (``flwr run``) all call :func:`preflight`,
so any bad input (missing or unreadable data, a split that cannot be made, an unknown
strategy, client algorithm or option, width-scaled tiers under a strategy that cannot
aggregate parts of tensors) ends as one line and exit code 2 before anything is started or
written, and a valid config with a setting that cannot take effect in the run or that
leaves nothing to train (a tier without clients, no client ever online, distillation
whose warm-up outlasts the run, exit weights all 0) is named in a ``fl-ee: warning:`` line.
"""

from __future__ import annotations

import os

import torch

from fl_ee.core.config import Config, TierConfig, resolve_paths
from fl_ee.core.errors import UserError, warn
from fl_ee.data.datasets import load_dataset, run_splits, run_unseen
from fl_ee.federation.asynchronous import check_async
from fl_ee.learning.algorithm import build_algorithm
from fl_ee.learning.schedule import round_lr
from fl_ee.models import build_model, load_weights, measure_flops, state_bytes
from sims.tiers import assign_tiers, tier_counts
from sims.traces import load_availability, load_capacity
from strategies import build_strategy, network_spec
from strategies.feddyn import client_alpha
from strategies.scalefl import distillation_off


def preflight(cfg: Config, warnings: bool = True) -> Config:
    """Check the data, the split, the model, the strategy and the client algorithm; return the config, paths absolute.

    Raises :class:`~fl_ee.core.errors.UserError` naming the key at fault. The dataset and the
    split are cached on the way (in this process and on disk), so the run reuses them.
    The :func:`config_warnings` are printed, unless ``warnings`` is false (a sweep prints
    them itself, naming the setting).
    """
    cfg = resolve_paths(cfg)
    run_splits(cfg)  # loads the dataset, then splits it over the clients
    check_model(cfg)
    check_widths(cfg)
    build_algorithm(cfg)
    check_trace(cfg)
    for line in config_warnings(cfg) if warnings else ():
        warn(line)
    return cfg


def reseeded(checked: Config, seed: int) -> Config:
    """``checked``, a config :func:`preflight` returned, under another seed, once its split was made.

    The split is the one part of the preflight that depends on the seed.
    """
    cfg = checked.model_copy(update={"seed": seed})
    run_splits(cfg)
    return cfg


def check_trace(cfg: Config) -> None:
    """``simulation.availability_trace`` and ``capacity_trace``, where set, read back (:mod:`sims.traces`)."""
    if cfg.simulation.availability_trace:
        load_availability(cfg.simulation.availability_trace)
    if cfg.simulation.capacity_trace:
        load_capacity(cfg.simulation.capacity_trace)


def check_model(cfg: Config) -> None:
    """The network runs on the dataset's images (a sample through every stage and exit, FLOPs counted).

    A network whose parameters alone do not fit in this machine's memory is refused before
    it is built. ``model.weights``, when set, must fit it key by key and shape by shape.
    """
    data = load_dataset(cfg.data)
    _, _, height, width = data.train_x.shape
    spec = network_spec(cfg, data)
    with torch.device("meta"):  # shapes only: nothing allocated, no random draw
        needed = state_bytes(build_model(spec).state_dict())
    if needed > machine_memory():
        raise _too_big(cfg, needed, f"more than this machine's {_gb(machine_memory())} of memory")
    try:
        model = build_model(spec)
        measure_flops(model)
    except (MemoryError, ValueError, RuntimeError) as exc:
        # torch's allocator fails as "... can't allocate memory: you tried to allocate N bytes"
        if isinstance(exc, MemoryError) or "allocate" in str(exc):
            raise _too_big(cfg, needed, "more than this machine could allocate") from None
        raise UserError(f"a {cfg.model.backbone} of width {cfg.model.width} cannot run on {height}x{width} "
                        f"images ({exc}); raise model.width", key="model.width") from None
    if cfg.model.weights:
        load_weights(model, cfg.model.weights)


def check_widths(cfg: Config) -> None:
    """Width-scaled tiers need a strategy that aggregates parts of tensors (``partial_tensors``).

    With ``simulation.mode = async``, the strategy must aggregate buffered updates
    (:func:`~fl_ee.federation.asynchronous.check_async`).
    """
    strategy = build_strategy(cfg)
    if cfg.simulation.mode == "async":
        check_async(strategy)
    narrow = [i for i, t in enumerate(cfg.tiers) if t.width < 1]
    if narrow and not strategy.partial_tensors:
        raise UserError(f"strategy {cfg.strategy.name} keeps state per whole tensor, so its tiers cannot be "
                        f"width-scaled; use depthfl, heterofl, fjord or scalefl", key=f"tiers.{narrow[0]}.width")


def machine_memory() -> int:
    """The physical memory of this machine, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gb(size: int) -> str:
    return f"{size / 1e9:,.1f} GB"


def _too_big(cfg: Config, needed: int, why: str) -> UserError:
    return UserError(f"a {cfg.model.backbone} of width {cfg.model.width} needs {_gb(needed)} for its weights "
                     f"alone (4 bytes per parameter), {why}; lower model.width", key="model.width")


CALIBRATION_WARNING = 0.5  # holding out this share of the training samples or more is warned about


def config_warnings(cfg: Config) -> list[str]:
    """What in a valid config cannot take effect in the run as configured, or leaves nothing (or little) to train.

    A pure function of the config, so the same lines come before the run (``fl-ee check``,
    ``fl-ee run``) and in ``summary.json`` (``warnings``). Only something switched on is
    named: distillation whose warm-up outlasts the run, a tier no client joins, exit
    weights that read no label; a setting of something switched off (``kd_weight``
    without distillation) is not.
    """
    counts = tier_counts([t.share for t in cfg.tiers], cfg.data.num_clients)
    populated = [(i, t) for i, (t, n) in enumerate(zip(cfg.tiers, counts)) if n]
    found = [f"tier {t.name!r} gets no client (share {t.share:g} of {cfg.data.num_clients} clients); "
             f"raise tiers.{i}.share or data.num_clients" for i, (t, n) in enumerate(zip(cfg.tiers, counts)) if not n]
    return [*found, *_offline_warnings(populated), *_training_warnings(cfg, [t for _, t in populated]),
            *_unseen_warnings(cfg), *_evaluation_warnings(cfg)]


def _unseen_warnings(cfg: Config) -> list[str]:
    """Tiers whose every client is held out of training (``data.unseen_fraction``)."""
    if not cfg.data.unseen_count:
        return []
    tier_of, unseen = assign_tiers([t.share for t in cfg.tiers], cfg.data.num_clients, cfg.seed), run_unseen(cfg)
    found = []
    for i, tier in enumerate(cfg.tiers):
        members = {c for c in range(cfg.data.num_clients) if tier_of[c] == i}
        if members and members <= unseen:
            found.append(f"every client of tier {tier.name!r} ({len(members)}) is unseen (data.unseen_fraction = "
                         f"{cfg.data.unseen_fraction:g}): none of them trains, so the tier has no participating "
                         "figures; lower data.unseen_fraction or raise the tier's share")
    return found


def _offline_warnings(populated: list[tuple[int, TierConfig]]) -> list[str]:
    """Tiers whose clients never finish a round: never online, or always dropping out."""
    never = [(i, t) for i, t in populated if t.availability == 0 or t.failure_rate == 1]
    if populated and len(never) == len(populated):
        return ["no tier's clients ever finish a round (availability 0 or failure_rate 1): no client will ever "
                "train, so the run will not be a result"]
    return [f"tier {t.name!r} has availability 0: its clients will never train; raise tiers.{i}.availability"
            if t.availability == 0 else
            f"tier {t.name!r} has failure_rate 1: its clients always drop out before they report; lower "
            f"tiers.{i}.failure_rate" for i, t in never]


def _training_warnings(cfg: Config, tiers: list[TierConfig]) -> list[str]:
    """Distillation that never acts, exit weights that read no label, little left to train, overselect of none."""
    t, found = cfg.training, []
    if t.distillation != "none":
        same = "so the run trains as with training.distillation = none"
        if t.kd_weight == 0:
            found.append(f"training.kd_weight = 0: distillation ({t.distillation}) adds nothing, {same}")
        elif t.kd_warmup_rounds > cfg.rounds:
            found.append(f"training.kd_warmup_rounds = {t.kd_warmup_rounds} is past the last round "
                         f"({cfg.rounds}): distillation ({t.distillation}) never starts, {same}")
        elif tiers and max(tier.depth for tier in tiers) == 1:
            found.append(f"every client holds one exit: distillation ({t.distillation}) needs two, {same}")
    if t.exit_weights and tiers:
        blind = [tier for tier in tiers if not any(t.exit_weights[:tier.depth])]
        if len(blind) == len(tiers):
            found.append(f"training.exit_weights {t.exit_weights} are 0 at every exit the clients hold: no loss "
                         "reads a label, so every exit stays at chance")
        else:
            found += [f"tier {tier.name!r} learns no labels: training.exit_weights are 0 at its exits 1-{tier.depth}"
                      for tier in blind]
    held = cfg.exit_policy.calibration_fraction
    if held >= CALIBRATION_WARNING:
        found.append(f"exit_policy.calibration_fraction = {held:g} holds out {held * 100:g}% of each client's "
                     f"training samples to calibrate: clients train on {(1 - held) * 100:g}% of them")
    if off := distillation_off(cfg):
        found.append(f"{off}: strategy {cfg.strategy.name} trains without ScaleFL's exit distillation "
                     "(training.distillation = last-exit with kd_weight > 0; ScaleFL's is 0.05)")
    mode = cfg.personalisation.mode
    if mode in ("finetune", "fedbabu") and not cfg.personalisation.lr and round_lr(t, cfg.rounds, cfg.rounds) == 0:
        found.append(f"the last round's lr is 0 (training.lr_schedule = {t.lr_schedule}): the final evaluation's "
                     f"fine-tuning (personalisation.mode = {mode}) trains at it and measures the received model "
                     "unchanged; set personalisation.lr (or training.lr_min above 0)")
    if cfg.training.prox_mu > 0 and client_alpha(cfg) > 0:
        found.append("training.prox_mu adds a second quadratic term to FedDyn's own (alpha); set it to 0 for FedDyn")
    sim = cfg.simulation
    if sim.straggler_policy == "overselect" and sim.overcommit == 0:
        found.append("simulation.overcommit = 0: overselect samples no extra client, so the run is the same as "
                     "with straggler_policy = wait")
    return found


def _evaluation_warnings(cfg: Config) -> list[str]:
    """What is never measured when no client evaluates."""
    if cfg.strategy.fraction_evaluate > 0 or cfg.strategy.final_evaluate_all:
        return []
    why = "no client evaluates (strategy.fraction_evaluate = 0)"
    found = []
    if cfg.personalisation.mode != "none":
        found.append(f"personalisation.mode = {cfg.personalisation.mode} is never measured: {why}, so the summary "
                     "has the global model only")
    if cfg.simulation.target_accuracy > 0:
        found.append(f"simulation.target_accuracy is never reached: {why}, so time_to_accuracy_s stays null")
    if cfg.data.unseen_count:
        found.append(f"data.unseen_fraction holds {cfg.data.unseen_count} clients out of training that are never "
                     f"evaluated: {why}")
    return found
