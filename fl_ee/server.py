"""The Flower ``ServerApp``: builds the federation from the config, runs rounds, writes the run dir.

``run_federation`` is the round loop; ``make_server_app`` wraps it for ``fl-ee run``,
and the module-level ``app`` reads ``context.run_config`` for ``flwr run``.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fl_ee.config import Config, config_to_json, config_to_toml, load_config, parse_overrides
from fl_ee.data import TensorDataset, load_dataset, run_splits
from fl_ee.metrics import straggler_summary, time_to_accuracy
from fl_ee.models import EarlyExitCNN, slice_state
from fl_ee.rundir import RunDir, default_run_dir
from fl_ee.seeding import derive_seed
from fl_ee.summary import outcome_sections, personalised_summary
from fl_ee.training import accuracy, exit_logits
from sims.clock import OK
from sims.emulator import DeviceEmulator
from sims.tiers import assign_tiers
from strategies import ClientInfo, DepthAwareStrategy, build_strategy

INIT_STREAM = 4  # seed stream for the global model's initial weights
NODE_WAIT_S = 120.0

RoundCallback = Callable[[dict[str, Any]], None]


def resolve_paths(cfg: Config) -> Config:
    """Make ``data.root`` absolute, so every process (Ray workers too) reads the same files."""
    root = str(Path(cfg.data.root).expanduser().resolve())
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": root})})


def build_strategy_for(cfg: Config) -> DepthAwareStrategy:
    """The configured strategy, seeded by the run seed."""
    s = cfg.strategy
    return build_strategy(s.name, s.options, s.fraction_train, s.fraction_evaluate, cfg.seed)


def initial_model(cfg: Config, data: TensorDataset) -> EarlyExitCNN:
    """The full-depth global model, initialised from the run seed."""
    torch.manual_seed(derive_seed(cfg.seed, INIT_STREAM))
    return EarlyExitCNN(data.model_spec(cfg.model.width, cfg.model.exit_head))


def _wait_for_nodes(grid: Grid, count: int) -> list[int]:
    deadline = time.monotonic() + NODE_WAIT_S
    while len(node_ids := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(node_ids)} of {count} simulated clients came up in {NODE_WAIT_S:.0f}s")
        time.sleep(0.05)
    if len(node_ids) > count:
        raise RuntimeError(f"the federation has {len(node_ids)} nodes but data.num_clients is {count}; "
                           f"run it with num-supernodes={count}")
    return node_ids


def _check(replies: Sequence[Message], what: str) -> None:
    """Fail loudly when every client of a step failed (a bug, not a straggler)."""
    if replies and all(m.has_error() for m in replies):
        raise RuntimeError(f"every client failed to {what}: {replies[0].error.reason}")


def discover_clients(grid: Grid, cfg: Config, config_text: str) -> list[ClientInfo]:
    """Ask every node for its client id and data sizes; place each client in its tier."""
    node_ids = _wait_for_nodes(grid, cfg.data.num_clients)
    content = RecordDict({"config": ConfigRecord({"run-config": config_text})})
    replies = list(
        grid.send_and_receive([Message(content, dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids])
    )
    failed = [m for m in replies if m.has_error()]
    if failed:
        raise RuntimeError(f"{len(failed)} clients failed to report their data: {failed[0].error.reason}")
    tier_of = assign_tiers([t.share for t in cfg.tiers], cfg.data.num_clients, cfg.seed)
    clients = []
    for reply in replies:
        m = reply.content["metrics"]
        cid = int(m["client-id"])
        tier = cfg.tiers[tier_of[cid]]
        clients.append(
            ClientInfo(reply.metadata.src_node_id, cid, tier.name, tier.depth, int(m["num-train"]), int(m["num-test"]))
        )
    return sorted(clients, key=lambda c: c.client_id)


def evaluate_global(arrays: ArrayRecord, data: TensorDataset, model: EarlyExitCNN, depth: int) -> dict[str, float]:
    """Accuracy of the global model's exits 1..depth on the global test set."""
    sub = EarlyExitCNN(model.spec, depth)
    sub.load_state_dict(slice_state(arrays.to_torch_state_dict(), depth))
    logits = exit_logits(sub, data.test_x)
    return {str(i + 1): accuracy(z, data.test_y) for i, z in enumerate(logits)}


def client_row(client: ClientInfo, metrics: dict[str, Any] | None, max_depth: int) -> dict[str, Any]:
    """One ``clients.csv`` row: identity, sizes and the client's latest evaluation."""
    exits = list(metrics["exit-accuracy"]) if metrics else []
    fractions = list(metrics["exit-fractions"]) if metrics else []
    row: dict[str, Any] = {
        "client_id": client.client_id,
        "tier": client.tier,
        "depth": client.depth,
        "num_train": client.num_train,
        "num_test": client.num_test,
        "evaluated_round": metrics["round"] if metrics else "",
    }
    for i in range(max_depth):
        row[f"accuracy_exit{i + 1}"] = round(exits[i], 6) if i < len(exits) else ""
    row["adaptive_accuracy"] = round(metrics["adaptive-accuracy"], 6) if metrics else ""
    row["expected_flops"] = round(metrics["expected-flops"], 1) if metrics else ""
    row["full_flops"] = round(metrics["full-flops"], 1) if metrics else ""
    for i in range(max_depth):
        row[f"exit_fraction{i + 1}"] = round(fractions[i], 6) if i < len(fractions) else ""
    return row


def train_round(
    grid: Grid, strategy: DepthAwareStrategy, emulator: DeviceEmulator, rnd: int, arrays: ArrayRecord,
    config: ConfigRecord,
) -> tuple[ArrayRecord, dict[str, Any]]:
    """One training round on the virtual clock: sample, emulate presence, train, settle, aggregate.

    Unavailable and dropping-out clients are not sent work; every client that runs
    trains (so its personal exits move on), but only the replies the straggler policy
    counts reach the strategy.
    """
    messages = list(strategy.configure_train(rnd, arrays, config, grid))
    clock = emulator.begin(rnd, [strategy.clients[m.metadata.dst_node_id] for m in messages])
    send = []
    for message, client in zip(messages, clock.sampled):
        if clock.runs(client):
            if emulator.cfg.simulation.pace:
                message.content["config"]["pace-s"] = emulator.pace_seconds(client)
            send.append(message)
    replies = list(grid.send_and_receive(send)) if send else []
    _check(replies, f"train in round {rnd}")
    emulator.settle(
        clock,
        finished=[strategy.client_of(m) for m in replies if not m.has_error()],
        errored=[strategy.client_of(m) for m in replies if m.has_error()],
        keep=strategy.sample_size(strategy.fraction_train, len(strategy.train_pool())),
    )
    counted = [m for m in replies if clock.outcomes[strategy.client_of(m).client_id] == OK]
    new_arrays, metrics = strategy.aggregate_train(rnd, counted)
    record = {"metrics": dict(metrics or {}), "clock": emulator.record(clock)}
    return (new_arrays if new_arrays is not None else arrays), record


def evaluate_round(
    grid: Grid, strategy: DepthAwareStrategy, rnd: int, arrays: ArrayRecord, config: ConfigRecord
) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """Federated evaluation: each sampled client's metrics by client id, and the round's record."""
    replies = list(grid.send_and_receive(strategy.configure_evaluate(rnd, arrays, config, grid)))
    _check(replies, f"evaluate in round {rnd}")
    aggregated = strategy.aggregate_evaluate(rnd, replies)
    evaluated = {strategy.client_of(m).client_id: {**dict(m.content["metrics"]), "round": rnd}
                 for m in strategy.valid_replies(replies)}
    return evaluated, {"clients": sorted(evaluated), "aggregated": dict(aggregated or {})}


def run_federation(grid: Grid, cfg: Config, run_dir: RunDir, on_round: RoundCallback | None = None) -> dict[str, Any]:
    """Run every round, write the run directory, and return the summary."""
    cfg = resolve_paths(cfg)
    run_dir.write_config(config_to_toml(cfg))
    data = load_dataset(cfg.data)
    model = initial_model(cfg, data)
    strategy = build_strategy_for(cfg)
    if cfg.simulation.straggler_policy == "overselect":
        strategy.overcommit = cfg.simulation.overcommit
    config_text = config_to_json(cfg)
    run_splits(cfg)  # computed here while Ray starts; the clients then read the split cache
    clients = discover_clients(grid, cfg, config_text)
    strategy.register_clients(clients)
    emulator = DeviceEmulator(cfg, model, clients)

    arrays = ArrayRecord(model.state_dict())
    results: dict[int, dict[str, Any]] = {}
    global_by_exit: dict[str, float] = {}
    clocks: list[dict[str, Any]] = []
    accuracy_at: list[tuple[float, float | None]] = []  # (virtual time, personalised mean) per evaluation
    started = time.perf_counter()
    # the server's own evaluation runs while the clients evaluate (torch releases the GIL)
    with ThreadPoolExecutor(max_workers=1) as background:
        for rnd in range(1, cfg.rounds + 1):
            config = ConfigRecord({"run-config": config_text, "server-round": rnd})
            arrays, train = train_round(grid, strategy, emulator, rnd, arrays, config)
            clocks.append(train.pop("clock"))
            record: dict[str, Any] = {"round": rnd, "train": train, "clock": clocks[-1]}
            if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
                global_eval = background.submit(evaluate_global, arrays, data, model, cfg.max_depth)
                evaluated, record["evaluate"] = evaluate_round(grid, strategy, rnd, arrays, config)
                results.update(evaluated)
                global_by_exit = global_eval.result()
                personalised = personalised_summary(clients, results, [t.name for t in cfg.tiers], cfg.max_depth)
                record["evaluate"] |= {"personalised": personalised, "global": {"by_exit": global_by_exit}}
                accuracy_at.append((emulator.virtual_time_s, personalised["mean"]))
            record["wall_s"] = round(time.perf_counter() - started, 3)
            run_dir.append_round(record)
            if on_round is not None:
                on_round(record)

    summary = {
        "accuracy": {
            "personalised": personalised_summary(clients, results, [t.name for t in cfg.tiers], cfg.max_depth),
            "global": {"by_exit": global_by_exit},
        },
        **outcome_sections(clients, results, [t.name for t in cfg.tiers], cfg.max_depth),
        "clients": {"total": len(clients), "by_tier": {t.name: sum(c.tier == t.name for c in clients) for t in cfg.tiers}},
        "rounds": cfg.rounds,
        "seed": cfg.seed,
        "virtual_time_s": emulator.virtual_time_s,
        "time_to_accuracy_s": time_to_accuracy(accuracy_at, cfg.simulation.target_accuracy),
        "stragglers": straggler_summary([c["by_tier"] for c in clocks], [c["round_time_s"] for c in clocks],
                                        [c["wasted_compute_s"] for c in clocks]),
    }
    run_dir.write_clients([client_row(c, results.get(c.client_id), cfg.max_depth) for c in clients])
    run_dir.write_summary(summary)
    return summary


def make_server_app(cfg: Config, run_dir: RunDir, on_round: RoundCallback | None = None) -> ServerApp:
    """A ServerApp bound to an already loaded config and run directory (used by ``fl-ee run``)."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        run_federation(grid, cfg, run_dir, on_round)

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
    run_federation(grid, cfg, RunDir.create(out))
