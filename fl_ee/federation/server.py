"""The Flower ``ServerApp``: builds the federation from the config and runs its rounds.

``run_federation`` is the round loop (synchronous rounds, :func:`sync_rounds`, or the
asynchronous server's versions, :mod:`fl_ee.federation.asynchronous`); it reports to
observers (the run directory, the progress bar, the checkpoints) and starts from the
latest checkpoint where there is one.
``make_server_app`` wraps it for ``fl-ee run``, and the module-level
``app`` reads ``context.run_config`` for ``flwr run``.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.serverapp import Grid, ServerApp

from fl_ee.core.config import Config, config_to_json, load_config, parse_overrides
from fl_ee.core.errors import warn
from fl_ee.core.seeding import Stream, derive_seed
from fl_ee.data.datasets import TensorDataset, calibration_size, load_dataset, run_splits, run_unseen
from fl_ee.federation.asynchronous import AsyncServer, Step
from fl_ee.federation.checkpoint import Checkpoints
from fl_ee.federation.faults import (
    DivergenceGuard,
    StrategyFault,
    aggregate_problem,
    all_lost,
    error_line,
    is_non_finite,
    lost_workers_warning,
    update_problem,
)
from fl_ee.federation.globaleval import evaluate_global, slice_threads
from fl_ee.federation.preflight import config_warnings, preflight
from fl_ee.learning.device import client_device
from fl_ee.learning.schedule import round_lr
from fl_ee.models import EarlyExitNet, ModelSpec, build_model, load_weights, submodel_flops
from fl_ee.results.observers import LoopState, Observer
from fl_ee.results.rundir import RunDir, client_row, default_run_dir
from fl_ee.results.summary import (
    Evaluation,
    build_summary,
    personalised_summary,
    run_warnings,
    submodel_summary,
    with_deployed_thresholds,
)
from fl_ee.results.tensorboard import tensorboard_observers
from fl_ee.wire.exchange import Exchange, client_of
from fl_ee.wire.protocol import (
    ARRAYS,
    EvaluateReply,
    Instructions,
    TrainReply,
    instructions_of,
    payload_of,
    with_instructions,
)
from sims.clock import OK
from sims.emulator import DeviceEmulator, RoundClock
from sims.tiers import assign_tiers
from strategies import ClientInfo, DepthAwareStrategy, build_strategy, network_spec
from strategies.base import Feedback, to_numpy


def initial_model(cfg: Config, data: TensorDataset) -> EarlyExitNet:
    """The full global model (the strategy's network), from the run seed or loaded from ``model.weights``."""
    spec = network_spec(cfg, data)
    torch.manual_seed(derive_seed(cfg.seed, Stream.INIT))
    model = build_model(spec)
    if cfg.model.weights:
        load_weights(model, cfg.model.weights)
    return model


def _check(replies: Sequence[Message], what: str) -> None:
    """Fail loudly when every client of a step failed (a bug, not a straggler), unless their Ray workers died."""
    if replies and all(m.has_error() for m in replies) and not all_lost([m.error.reason for m in replies]):
        raise RuntimeError(f"every client failed to {what}: {replies[0].error.reason}")


def make_clients(cfg: Config) -> list[ClientInfo]:
    """Every client of the run, in client-id order: its tier, depth and data sizes.

    Worked out here from the seed and the (cached) split, as each client would: no
    message is needed. A client's ``node_id`` is its client id: :mod:`fl_ee.wire.exchange`
    places its messages on the simulated nodes.
    """
    tier_of = assign_tiers([t.share for t in cfg.tiers], cfg.data.num_clients, cfg.seed)
    clients = []
    for cid, split in enumerate(run_splits(cfg)):
        tier = cfg.tiers[tier_of[cid]]
        held_out = calibration_size(len(split.train), cfg.exit_policy.calibration_fraction)  # not trained on
        clients.append(ClientInfo(cid, cid, tier.name, tier.depth, len(split.train) - held_out, len(split.test),
                                  tier.width))
    return clients


Work = Callable[[Message], float]


def split_unseen(cfg: Config, clients: Sequence[ClientInfo]) -> tuple[list[ClientInfo], list[ClientInfo]]:
    """The clients that take part in training, and the unseen ones (``data.unseen_fraction``), each in id order."""
    unseen = run_unseen(cfg)
    return [c for c in clients if c.client_id not in unseen], [c for c in clients if c.client_id in unseen]


def _work(clients: Mapping[int, ClientInfo], spec: ModelSpec, evaluate: bool = False,
          adapting: Collection[int] = ()) -> Work:
    """A message's forward FLOPs over the client's samples: :meth:`Exchange.send` sends the most first.

    ``clients`` by node id, each costing its submodel's FLOPs; the ``adapting`` ones (unseen)
    also train before they evaluate.
    """

    def work(message: Message) -> float:
        client = clients[message.metadata.dst_node_id]
        samples = (client.num_test + client.num_train * (client.node_id in adapting) if evaluate
                   else client.num_train)
        return samples * submodel_flops(spec, None, client.width).exit_costs()[client.depth - 1]

    return work


def _guarded(strategy: DepthAwareStrategy, method: str, rnd: int, *args: Any) -> Any:
    """Call a strategy method; any exception becomes a :class:`StrategyFault` naming it."""
    try:
        return getattr(strategy, method)(*args)
    except Exception as exc:
        raise StrategyFault(type(strategy).__name__, method, rnd, f"{type(exc).__name__}: {exc}") from exc


def _errors(sender: Callable[[Message], ClientInfo], replies: Sequence[Message]) -> dict[ClientInfo, str]:
    """The clients whose reply is an error (``sender`` names each), with the reason they reported."""
    return {sender(m): m.error.reason or "unknown error" for m in replies if m.has_error()}


def _feedback(client: ClientInfo, reply: TrainReply, clock: RoundClock) -> Feedback:
    """What the selection learns of a client whose update arrived: examples, loss, simulated seconds."""
    return Feedback(client.client_id, reply.num_examples, reply.train_loss, clock.times[client.client_id].total_s)


def train_round(
    exchange: Exchange, strategy: DepthAwareStrategy, emulator: DeviceEmulator, rnd: int, arrays: ArrayRecord,
    config: ConfigRecord, work: Work | None = None,
) -> tuple[ArrayRecord, dict[str, Any], bool]:
    """One training round on the virtual clock: sample the online, emulate presence, train, settle, check, aggregate.

    Unavailable and dropping-out clients are not sent work; every client that runs
    trains (so its personal exits move on), but only the replies the straggler policy
    counts, and whose update passes :func:`~fl_ee.federation.faults.update_problem`, reach the
    strategy; its aggregate is checked too. Returns the new global arrays, the round's
    record (``metrics``, ``clock``, and ``errors``: client id -> reported traceback), and
    whether the round was *bad*: it produced nothing finite to aggregate.
    """
    strategy.online = emulator.online(strategy.train_pool())
    messages = list(_guarded(strategy, "configure_train", rnd, rnd, arrays, config, exchange.grid))
    clock = emulator.begin(rnd, [strategy.recipient(m) for m in messages])
    send = []
    for message, client in zip(messages, clock.sampled):
        if clock.runs(client):
            if (pace_s := emulator.pace_seconds(clock, client)) or client.client_id in clock.steps:
                with_instructions(message, dataclasses.replace(instructions_of(message), pace_s=pace_s,
                                                               max_steps=clock.steps.get(client.client_id)))
            send.append(message)
    replies = exchange.send(send, work)
    _check(replies, f"train in round {rnd}")
    errors = _errors(strategy.sender, replies)
    emulator.settle(clock, finished=[strategy.sender(m) for m in replies if not m.has_error()],
                    errored={c: error_line(reason) for c, reason in errors.items()}, keep=strategy.train_quota())
    strategy.selection.feedback(rnd, [_feedback(strategy.sender(m), payload_of(m, TrainReply), clock)
                                      for m in strategy.valid_replies(replies)])
    current = to_numpy(arrays)
    counted = []
    for reply in replies:
        client = strategy.sender(reply)
        if clock.outcomes[client.client_id] != OK:
            continue
        sent = to_numpy(reply.content.array_records[ARRAYS])
        problem = update_problem(emulator.update_of(client, current, rnd), sent)
        if problem is None:
            counted.append(reply)
        else:
            clock.reject(client, problem)
    new_arrays, metrics = _guarded(strategy, "aggregate_train", rnd, rnd, counted)
    record: dict[str, Any] = {"metrics": dict(metrics or {})}
    bad = not counted and any(is_non_finite(r) for r in clock.reasons.values())
    if new_arrays is not None:
        broken, non_finite = aggregate_problem(current, to_numpy(new_arrays))
        if broken:
            raise StrategyFault(type(strategy).__name__, "aggregate_train", rnd,
                                f"returned a bad global state: {broken}")
        if non_finite:
            record["aggregate_rejected"] = non_finite
            new_arrays, bad = None, True
    record["clock"] = emulator.record(clock)
    record["errors"] = {c.client_id: reason for c, reason in errors.items()}
    return (new_arrays if new_arrays is not None else arrays), record, bad


def evaluate_round(
    exchange: Exchange, strategy: DepthAwareStrategy, rnd: int, arrays: ArrayRecord, config: ConfigRecord,
    work: Work | None = None, unseen: Sequence[ClientInfo] = (),
) -> tuple[dict[int, Evaluation], dict[str, Any]]:
    """Federated evaluation: each sampled client's evaluation by client id, and the round's record.

    The ``unseen`` clients (the strategy does not know them) are evaluated in the same
    batch; the strategy aggregates its own clients' replies alone, and the record lists
    the unseen evaluated as ``unseen_clients``.
    """
    messages = list(_guarded(strategy, "configure_evaluate", rnd, rnd, arrays, config, exchange.grid))
    held_out = {c.client_id: c for c in unseen}
    replies = exchange.send([*messages, *strategy.messages(unseen, arrays, config, MessageType.EVALUATE)],
                            work)  # none with fraction_evaluate = 0
    _check(replies, f"evaluate in round {rnd}")
    own = [m for m in replies if client_of(m) not in held_out]
    aggregated = _guarded(strategy, "aggregate_evaluate", rnd, rnd, own)
    evaluated = {strategy.sender(m).client_id: Evaluation(rnd, payload_of(m, EvaluateReply))
                 for m in strategy.valid_replies(own)}
    record: dict[str, Any] = {"clients": sorted(evaluated), "aggregated": dict(aggregated or {})}
    if unseen:
        theirs = sorted((m for m in replies if client_of(m) in held_out and not m.has_error()), key=client_of)
        evaluated |= {client_of(m): Evaluation(rnd, payload_of(m, EvaluateReply)) for m in theirs}
        record["unseen_clients"] = [client_of(m) for m in theirs]
    if errors := _errors(lambda m: held_out.get(client_of(m)) or strategy.sender(m), replies):
        record["failed"] = {c.client_id: error_line(reason) for c, reason in errors.items()}
        record["errors"] = {c.client_id: reason for c, reason in errors.items()}
    return evaluated, record


def sync_rounds(
    exchange: Exchange, strategy: DepthAwareStrategy, emulator: DeviceEmulator, state: LoopState, rounds: int,
    instructions: Callable[[int], ConfigRecord], work: Work,
) -> Iterator[Step]:
    """The synchronous rounds after ``state.round`` up to ``rounds`` (:func:`train_round` each), one step a round."""
    for rnd in range(state.round + 1, rounds + 1):
        config = instructions(rnd)
        yield rnd, config, *train_round(exchange, strategy, emulator, rnd, state.arrays, config, work)


def run_federation(
    grid: Grid, cfg: Config, observers: Sequence[Observer] = (), checkpoints: Checkpoints | None = None
) -> dict[str, Any]:
    """Run every round, report to ``observers``, and return the summary.

    ``cfg`` must have passed :func:`~fl_ee.federation.preflight.preflight`. With ``checkpoints``
    (a run directory's), the loop's state is saved there every ``checkpoint_every``
    rounds, clients keep their state there, and where it already holds a
    checkpoint the run continues from it.
    """
    data = load_dataset(cfg.data)
    model = initial_model(cfg, data)
    strategy = build_strategy(cfg)
    config_text = config_to_json(cfg)
    clients = make_clients(cfg)
    participating, unseen = split_unseen(cfg, clients)
    exchange = Exchange(grid, len(clients))
    _guarded(strategy, "register_clients", 0, participating, model.spec)  # the unseen never train
    emulator = DeviceEmulator(cfg, model, clients)
    roster = {c.node_id: c for c in clients}
    train_work = _work(roster, model.spec)
    evaluate_work = _work(roster, model.spec, evaluate=True, adapting={c.node_id for c in unseen})
    tiers = [t.name for t in cfg.tiers]
    state = LoopState(ArrayRecord(model.state_dict()))
    state_dir = ""
    if checkpoints is not None:
        observers, state_dir = [*observers, checkpoints], str(checkpoints.client_dir.resolve())  # clients' cwd differs
        state = checkpoints.restore(cfg, state, strategy, emulator)
    for observer in observers:
        observer.on_start(cfg, clients)

    def instructions(rnd: int) -> ConfigRecord:
        return Instructions(config_text, server_round=rnd, state_dir=state_dir,
                            lr=round_lr(cfg.training, cfg.rounds, rnd)).to_record()

    if cfg.simulation.mode == "async":
        server = AsyncServer(cfg, exchange, strategy, emulator, state.arrays, instructions)
        if state.round:
            server.load_state_dict(state.async_state)
        steps = server.versions(state, cfg.rounds, cfg.checkpoint_every if checkpoints is not None else 0)
    else:
        steps = sync_rounds(exchange, strategy, emulator, state, cfg.rounds, instructions, train_work)
    guard = DivergenceGuard(cfg.simulation.max_bad_rounds, state.bad_rounds)
    started = time.perf_counter()
    server_device = client_device(cfg.simulation.client_gpus)  # with GPU shares for the clients, the server's too
    # the server's own evaluation runs while the clients evaluate, in slices side by side (or in turn on a GPU)
    with ThreadPoolExecutor(max_workers=slice_threads()) as threads:
        for rnd, config, state.arrays, train, bad in steps:
            state.clocks.append(train.pop("clock"))
            errors = {"train": train.pop("errors")}
            record: dict[str, Any] = {"round": rnd, "train": train, "clock": state.clocks[-1]}
            if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
                global_eval = evaluate_global(state.arrays, data, model, cfg.max_depth, threads, cfg.max_width,
                                              server_device)
                sampled_unseen = strategy.sample(rnd, strategy.evaluate_fraction(rnd), Stream.SAMPLE_UNSEEN,
                                                 unseen) if unseen else []
                evaluated, record["evaluate"] = evaluate_round(exchange, strategy, rnd, state.arrays, config,
                                                               evaluate_work, sampled_unseen)
                errors["evaluate"] = record["evaluate"].pop("errors", {})
                state.results = with_deployed_thresholds(cfg, participating, {**state.results, **evaluated})
                state.global_eval = global_eval()
                personalised = personalised_summary(participating, state.results, tiers, cfg.max_depth)
                record["evaluate"] |= {"personalised": personalised, "global": state.global_eval}
                if unseen:  # deployed apart: their thresholds come from their own curves
                    state.results = with_deployed_thresholds(cfg, unseen, state.results)
                    record["evaluate"]["unseen"] = personalised_summary(unseen, state.results, tiers, cfg.max_depth)
                state.accuracy_at.append((emulator.virtual_time_s, personalised["mean"]))
            record["wall_s"] = round(time.perf_counter() - started, 3)
            if any(errors.values()):
                record["client_errors"] = {step: e for step, e in errors.items() if e}
                if lost := lost_workers_warning(rnd, errors):
                    warn(lost)
            if placement := exchange.take_placement():  # filed apart: a Ray node's id changes from run to run
                record["placement"] = placement
            state.round = rnd
            for observer in observers:
                observer.after_round(record)
            guard.after_round(rnd, bad)
            state.bad_rounds = guard.bad_in_a_row
            for observer in observers:
                observer.after_state(state, strategy)

    summary = build_summary(cfg, clients, state.results, state.global_eval, state.clocks, state.accuracy_at,
                            config_warnings(cfg), {c.client_id for c in unseen}, submodel_summary(cfg, model.spec))
    for line in run_warnings(state.clocks):  # the config's were said before the run
        warn(line)
    rows = [client_row(c, state.results.get(c.client_id), cfg.max_depth, c in unseen if unseen else None)
            for c in clients]
    for observer in observers:
        observer.on_end(summary, rows)
    return summary


def make_server_app(
    cfg: Config, observers: Sequence[Observer], checkpoints: Checkpoints | None = None
) -> ServerApp:
    """A ServerApp bound to a preflighted config, its observers and checkpoints (used by ``fl-ee run``)."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        run_federation(grid, cfg, observers, checkpoints)

    return server


app = ServerApp()


def from_run_config(run_config: dict[str, Any]) -> tuple[Config, Path]:
    """The config and run directory named by a Flower run config (``flwr run``).

    Keys: ``preset`` (name or path), ``out`` (run directory; empty for
    ``runs/<timestamp>``) and ``set`` (space-separated dotted overrides, as
    ``fl-ee run --set`` takes them: ``set='rounds=5 data.alpha=0.1'``).
    """
    overrides = parse_overrides(shlex.split(str(run_config.get("set", ""))))
    cfg = load_config(str(run_config.get("preset", "quickstart")), overrides)
    return cfg, Path(str(run_config.get("out", "")) or default_run_dir())


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``; relative paths resolve against the SuperLink's directory."""
    cfg, out = from_run_config(dict(context.run_config))
    cfg = preflight(cfg)
    run_dir = RunDir.create(out)
    run_federation(grid, cfg, [run_dir, *tensorboard_observers(cfg, run_dir.path)], Checkpoints(run_dir.path))
