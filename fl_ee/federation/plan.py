"""``fl-ee check``: what a run will do, from the cost model alone, without Ray or a run directory.

:func:`make_plan` takes a preflighted config and works out, with the functions the run
itself uses, who is in which tier (``fl_ee.federation.server.make_clients``), each tier's
submodel (depth, width, forward FLOPs, parameters), how many bytes its slice weighs
(``sims.emulator.submodel_bytes``), each client's training FLOPs and simulated round time
(``sims.emulator.client_work`` / ``client_times``), who the strategy
samples each round (``sample_train``), and how long the rounds last on the virtual
clock (``DeviceEmulator``: availability, dropouts and the straggler policy). Nothing is
trained: the estimate assumes no client crashes for real.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import RenderableType
from rich.text import Text

from fl_ee.core.config import Config
from fl_ee.learning.schedule import round_lr
from fl_ee.results.fit import Col, Sheet

PLANNED_ROUNDS = 200  # rounds emulated for the estimate; longer runs are extrapolated from these


@dataclass(frozen=True)
class TierPlan:
    """One tier's submodel and share of the work, per round."""

    name: str
    depth: int
    width: float
    forward_flops: int  # one sample's forward FLOPs through the submodel and every exit of it
    params: int  # the submodel's parameters
    clients: int  # that take part in training (the unseen are left out)
    down_bytes: int  # per client and round: the shared tensors of its depth
    up_bytes: int  # what it returns in the last round (ic-only: its exits once the backbone is frozen)
    sampled: float  # clients sent work per round, mean over the emulated rounds
    train_flops: float  # training FLOPs of the tier's sampled clients per round, mean
    time_p50_s: float | None  # a client's simulated time in the last round (download + compute + upload), median
    time_max_s: float | None


@dataclass(frozen=True)
class Plan:
    """The whole run, estimated."""

    cfg: Config
    train_samples: int
    tiers: list[TierPlan]
    sampled: float  # clients sampled per round, mean
    trained: float  # of them, online and finishing in time (their update counts), mean
    round_p50_s: float
    round_max_s: float
    virtual_time_s: float  # all rounds, extrapolated beyond PLANNED_ROUNDS
    planned_rounds: int


def _percentile(values: Sequence[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else None


def make_plan(cfg: Config) -> Plan:
    """The plan of a run; ``cfg`` must have passed :func:`~fl_ee.federation.preflight.preflight`.

    torch, Flower and the run's own modules are imported here, not with this module: a
    warm ``fl-ee check`` renders a recorded plan without them (:mod:`fl_ee.federation.checkrecord`).
    """
    import numpy as np

    from fl_ee.data.datasets import load_dataset
    from fl_ee.federation.server import make_clients, split_unseen
    from fl_ee.learning.algorithm import build_algorithm
    from fl_ee.learning.scheme import backbone_frozen
    from fl_ee.models import EarlyExitNet, submodel_flops, submodel_params
    from sims.clock import OK
    from sims.emulator import DeviceEmulator, client_work, submodel_bytes
    from strategies import build_strategy, network_spec

    data = load_dataset(cfg.data)
    everyone = make_clients(cfg)
    clients, _ = split_unseen(cfg, everyone)
    model = EarlyExitNet(network_spec(cfg, data))
    submodels = [(t.depth, t.width) for t in cfg.tiers]
    steady = backbone_frozen(cfg.training, cfg.rounds)  # the last round's scheme (ic-only: frozen)
    algorithm = build_algorithm(cfg)
    down, up = submodel_bytes(model, submodels), submodel_bytes(model, submodels, steady, algorithm)
    work = {frozen: client_work(cfg, model.spec, clients, frozen, algorithm) for frozen in {False, steady}}
    strategy = build_strategy(cfg)
    strategy.register_clients(clients, model.spec)
    emulator = DeviceEmulator(cfg, model, everyone)

    planned = min(cfg.rounds, PLANNED_ROUNDS)
    sampled = {t.name: 0 for t in cfg.tiers}
    tier_flops = {t.name: 0.0 for t in cfg.tiers}
    round_times, trained = [], 0
    for rnd in range(1, planned + 1):
        strategy.online = emulator.online(strategy.train_pool())
        chosen = strategy.sample_train(rnd)
        clock = emulator.begin(rnd, chosen)
        emulator.settle(clock, [c for c in chosen if clock.runs(c)], {}, keep=strategy.train_quota())
        round_times.append(clock.round_time_s)
        trained += sum(outcome == OK for outcome in clock.outcomes.values())
        for c in chosen:
            sampled[c.tier] += 1
            tier_flops[c.tier] += work[backbone_frozen(cfg.training, rnd)][c.client_id]

    tiers = []
    for tier in cfg.tiers:
        key = (tier.depth, tier.width)
        forward = submodel_flops(model.spec, None, tier.width).exit_costs()[tier.depth - 1]
        times = [emulator.times_in(cfg.rounds)[c.client_id].total_s for c in clients if c.tier == tier.name]
        tiers.append(TierPlan(tier.name, tier.depth, tier.width, forward, submodel_params(model.spec, *key),
                              len(times), down[key], up[key], sampled[tier.name] / planned,
                              tier_flops[tier.name] / planned, _percentile(times, 50), max(times) if times else None))
    return Plan(cfg, len(data.train_y), tiers, sum(sampled.values()) / planned, trained / planned,
                float(np.percentile(round_times, 50)), max(round_times),
                emulator.virtual_time_s * cfg.rounds / planned, planned)


# ------------------------------------------------------------------------------ render


def _mb(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:,.3f}"


def _gflop(value: float) -> str:
    return f"{value / 1e9:,.2f}"


def _share(fraction: float) -> str:
    return "all clients" if fraction == 1 else f"{100 * fraction:.3g}% of clients"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def plan_table(plan: Plan) -> Sheet:
    """Per tier: its submodel (depth, width, FLOPs, parameters), clients, bytes, sampled clients, work and time."""
    headers = ["tier", "depth", "width", "MFLOP\n/sample", "params\nk", "clients", "down\nMB", "up\nMB",
               "sampled\n/round", "GFLOP\n/round", "client s\np50", "client s\nmax"]
    table = Sheet("Plan per tier", [Col(h, "left" if h == "tier" else "right") for h in headers],
                  groups=[range(1, 5), range(5, 8), range(8, 12)])
    for t in plan.tiers:
        table.add_row(t.name, str(t.depth), f"{t.width:g}", f"{t.forward_flops / 1e6:,.3f}", f"{t.params / 1e3:,.1f}",
                      str(t.clients), _mb(t.down_bytes), _mb(t.up_bytes), f"{t.sampled:.1f}", _gflop(t.train_flops),
                      _s(t.time_p50_s), _s(t.time_max_s))
    table.add_section()
    table.add_row("all", "", "", "", "", str(sum(t.clients for t in plan.tiers)), "", "", f"{plan.sampled:.1f}",
                  _gflop(sum(t.train_flops for t in plan.tiers)), "", "")
    table.caption = ("MFLOP/sample: one sample's forward pass through the tier's submodel and its exits; bytes per "
                     "client each round; client s: simulated download + compute + upload of one client "
                     "(sims/emulator.py)")
    return table


def training_line(cfg: Config) -> str:
    """Local SGD in a line: epochs, batch, the lr of the first and last round by its schedule, the other knobs.

    A fixed ``personalisation.lr`` is named after them.
    """
    t = cfg.training
    lr = f"lr {t.lr:g}"
    if t.lr_schedule != "constant":
        how = {"exp": f"x{t.lr_decay:g} per round", "cosine": "cosine",
               "step": f"x{t.lr_gamma:g} after round{'s' * (len(t.lr_milestones) > 1)} "
                       f"{', '.join(map(str, t.lr_milestones))}"}[t.lr_schedule]
        lr = (f"lr {round_lr(t, cfg.rounds, 1):.4g} in round 1 to {round_lr(t, cfg.rounds, cfg.rounds):.4g} "
              f"in round {cfg.rounds} ({t.lr_schedule}: {how})")
    personal = cfg.personalisation.lr
    extra = (f", weight decay {t.weight_decay:g}" if t.weight_decay else "") + (
        f", gradient norm clipped at {t.clip_norm:g}" if t.clip_norm else "") + (
        f"; personal step and fine-tuning at lr {personal:g} in every round" if personal else "")
    epochs = f"{t.local_epochs} epoch{'s' * (t.local_epochs > 1)}"
    return f"local SGD: {epochs} of batch {t.batch_size}, {lr}, momentum {t.momentum:g}{extra}"


def plan_renderables(plan: Plan) -> list[RenderableType]:
    """What ``fl-ee check`` prints: the run and its local SGD in two lines, the tier table, the clock's estimate."""
    cfg = plan.cfg
    d, s, sim = cfg.data, cfg.strategy, cfg.simulation
    split = {"dirichlet": f"dirichlet alpha {d.alpha:g}", "shards": f"shards, {d.shards_per_client} classes each",
             "iid": "iid"}[d.partitioner]
    if s.fraction_evaluate == 0:
        evaluate = ("every client evaluates after the last round only" if s.final_evaluate_all
                    else "no client evaluates (global model only)")
    else:
        evaluate = f"{_share(s.fraction_evaluate)} evaluate" + (
            ", all of them after the last round" if s.final_evaluate_all and s.fraction_evaluate < 1 else "")
    unseen = f", {d.unseen_count} of them unseen (never trained, evaluated apart)" if d.unseen_count else ""
    policy = sim.straggler_policy + (f" {sim.deadline_s:g} s" if sim.straggler_policy == "deadline" else "")
    extrapolated = (f" (extrapolated from the first {plan.planned_rounds})"
                    if plan.planned_rounds < cfg.rounds else "")
    return [
        Text(f"config ok: {d.name}, {plan.train_samples:,} training samples over {d.num_clients} clients "
             f"({split}){unseen}; "
             f"{cfg.rounds} rounds of {s.name}, {_share(s.fraction_train)} train, {evaluate}; "
             f"model {cfg.model.backbone} width {cfg.model.width}, depth up to {cfg.max_depth}"),
        Text(training_line(cfg)),
        plan_table(plan),
        Text(async_line(cfg) if sim.mode == "async" else
             f"virtual clock ({policy}): {plan.sampled:.1f} clients sampled per round, {plan.trained:.1f} of them "
             f"counted; round time p50 {_s(plan.round_p50_s)} s, max {_s(plan.round_max_s)} s; "
             f"all {cfg.rounds} rounds {_s(plan.virtual_time_s)} s{extrapolated}"),
    ]


def async_line(cfg: Config) -> str:
    """The clock's line of an asynchronous run: what it keeps busy and aggregates (its timing is not estimated)."""
    sim = cfg.simulation
    return (f"virtual clock (async): {sim.concurrency} clients training at once, a server version every "
            f"{sim.buffer_size} arrivals, {sim.staleness} staleness weights; {cfg.rounds} versions (the table's "
            "per-round figures are a synchronous round's; fl-ee check does not time async runs)")
