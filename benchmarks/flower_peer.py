"""fl-ee against plain Flower doing the same client work; prints one JSON object.

The peer is what a user would write with Flower alone: Flower's own
``flwr.serverapp.strategy.FedAvg`` and its ``start()`` loop, one simulated node per
client (its ``partition-id``), and a ClientApp calling fl-ee's training and evaluation
functions on the same submodels, data, batches and steps (personal exits trained over
the frozen backbone and kept in ``Context.state``, then the joint step; evaluation with
the personal exits under the exit policy; the server's global evaluation as
``evaluate_fn``), on the same Ray simulation engine with the same client resources.
It has no tiers' bookkeeping, virtual clock, fault checks, run directory or metrics
beyond the accuracy. FedAvg averages every key over every reply, so a client sends back
the full model, its deeper blocks as received.

Both run the reference workload of ``benchmarks/overhead.py`` in child processes, one
after the other (``--repeat`` times, interleaved). Steady state is the end of round 1 to
the end of the last round. FedAvg samples its own clients, so the two sides train
different clients; each side's work is counted in FLOPs (``sims.emulator.client_flops``
for training, forward FLOPs for evaluation) and the ratio is also given per FLOP.

    .venv/bin/python -m benchmarks.flower_peer [--repeat 2]     # ~3 min on a quiet 2-core machine
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from benchmarks._proc import read_rounds, watch_run
from benchmarks.overhead import PRESET, overrides, workload
from fl_ee.core.config import Config, config_from_dict, config_to_json, load_config
from fl_ee.core.seeding import Stream, derive_seed
from fl_ee.data.datasets import client_calibration, client_data, load_dataset
from fl_ee.deployment.deploy import policy_figures
from fl_ee.federation.client import model_spec
from fl_ee.federation.globaleval import evaluate_global, slice_threads
from fl_ee.federation.preflight import preflight
from fl_ee.federation.server import initial_model, make_clients
from fl_ee.learning.training import accuracy, exit_logits, stage_features, train_exits, train_joint
from fl_ee.models import EarlyExitNet, build_model, measure_flops, slice_state, submodel_flops
from sims.emulator import client_flops
from sims.tiers import assign_tiers

RUN_CONFIG = "run-config"  # the peer's train/evaluate config: the run config as JSON
HEADS = "heads"  # the peer's personal exits in Context.state

peer_client = ClientApp()


@functools.lru_cache(maxsize=2)
def _run(text: str) -> tuple[Config, list[int]]:
    """The run config, and each client's tier, once per process."""
    cfg = config_from_dict(json.loads(text))
    return cfg, list(assign_tiers([t.share for t in cfg.tiers], cfg.data.num_clients, cfg.seed))


def _received(msg: Message, context: Context) -> tuple[Config, int, EarlyExitNet, torch.nn.ModuleList, dict]:
    """The run config, this node's client id, its submodel with the received weights, its personal heads."""
    cfg, tier_of = _run(str(msg.content.config_records["config"][RUN_CONFIG]))
    torch.set_num_threads(max(1, int(cfg.simulation.client_cpus)))
    cid = int(context.node_config["partition-id"])
    received = msg.content.array_records["arrays"].to_torch_state_dict()
    model = build_model(model_spec(cfg), cfg.tiers[tier_of[cid]].depth)
    model.load_state_dict(slice_state(received, model.depth))
    heads = copy.deepcopy(model.exits)
    if HEADS in context.state:
        heads.load_state_dict(context.state.array_records[HEADS].to_torch_state_dict())
    return cfg, cid, model, heads, received


@peer_client.train()
def peer_train(msg: Message, context: Context) -> Message:
    """fl-ee's local work: personal exits over the frozen backbone, then the joint step."""
    cfg, cid, model, heads, received = _received(msg, context)
    x, y, _, _ = client_data(cfg, cid)
    rnd = cast(int, msg.content.config_records["config"]["server-round"])
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, Stream.LOCAL_TRAINING, rnd, cid))
    train_exits(heads, stage_features(model, x), y, cfg.training, cfg.personalisation.epochs, generator)
    context.state[HEADS] = ArrayRecord(heads.state_dict())
    train_joint(model, x, y, cfg.training, generator)
    metrics = MetricRecord({"num-examples": len(y), "client-id": cid})
    return Message(RecordDict({"arrays": ArrayRecord({**received, **model.state_dict()}), "metrics": metrics}),
                   reply_to=msg)


@peer_client.evaluate()
def peer_evaluate(msg: Message, context: Context) -> Message:
    """Every exit with the personal heads, and the adaptive accuracy under the exit policy."""
    cfg, cid, model, heads, _ = _received(msg, context)
    _, _, x, y = client_data(cfg, cid)
    calib_x, calib_y = client_calibration(cfg, cid)
    logits = exit_logits(model, x, heads)
    costs = submodel_flops(model.spec, model.depth).exit_costs()
    adaptive = policy_figures(exit_logits(model, calib_x, heads), calib_y, logits, y, costs, cfg.exit_policy,
                              cfg.max_depth).adaptive
    metrics = MetricRecord({"num-examples": len(y), "client-id": cid, "accuracy": accuracy(logits[-1], y),
                            "adaptive-accuracy": adaptive.accuracy})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def peer_server(cfg: Config, ends: list[float], took_part: dict[str, list[list[int]]]) -> ServerApp:
    """FedAvg's ``start()`` loop; ``ends`` gets the time each round ends, ``took_part`` who trained and evaluated."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        data = load_dataset(cfg.data)
        model = initial_model(cfg, data)

        def noted(kind: str):
            def aggregate(contents: list[RecordDict], weight_key: str) -> MetricRecord:
                metrics = [c.metric_records["metrics"] for c in contents]
                took_part[kind].append(sorted(cast(int, m["client-id"]) for m in metrics))
                return MetricRecord({weight_key: sum(cast(int, m[weight_key]) for m in metrics)})
            return aggregate

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> None:
            if server_round:  # as fl-ee evaluates the global model (here with torch's own threads, clients idle)
                with ThreadPoolExecutor(slice_threads()) as threads:
                    evaluate_global(arrays, data, model, cfg.max_depth, threads)()
            ends.append(time.perf_counter())

        strategy = FedAvg(fraction_train=cfg.strategy.fraction_train, fraction_evaluate=cfg.strategy.fraction_evaluate,
                          min_available_nodes=cfg.data.num_clients, train_metrics_aggr_fn=noted("train"),
                          evaluate_metrics_aggr_fn=noted("evaluate"))
        run_config = ConfigRecord({RUN_CONFIG: config_to_json(cfg)})
        strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=cfg.rounds, train_config=run_config,
                       evaluate_config=run_config, evaluate_fn=evaluate_fn)

    return server


def run_peer() -> dict:
    """The peer in this process: seconds from start to each round's end, and who took part."""
    from flwr.simulation import run_simulation

    from sims.backend import backend_config, init_ray

    started = time.perf_counter()
    cfg = preflight(load_config(PRESET, overrides()[0]))
    init_ray(cfg)
    ends: list[float] = []
    took_part: dict[str, list[list[int]]] = {"train": [], "evaluate": []}
    run_simulation(server_app=peer_server(cfg, ends, took_part), client_app=peer_client,
                   num_supernodes=cfg.data.num_clients, backend_config=backend_config(cfg))
    return {"ends_s": [round(t - started, 3) for t in ends[1:]], **took_part}


# ------------------------------------------------------------------------------- the comparison


def work_flops(cfg: Config, trained: list[list[int]], evaluated: list[list[int]]) -> float:
    """FLOPs of rounds 2.. : clients' training, their evaluation, and the global evaluation."""
    clients = {c.client_id: c for c in make_clients(cfg)}
    flops = measure_flops(build_model(model_spec(cfg)))
    costs = flops.exit_costs()
    total = sum(client_flops(cfg, flops, clients[c].depth, clients[c].num_train) for r in trained[1:] for c in r)
    total += sum(clients[c].num_test * costs[clients[c].depth - 1] for r in evaluated[1:] for c in r)
    return total + len(trained[1:]) * len(load_dataset(cfg.data).test_y) * costs[-1]


def fl_ee_side(tmp: Path) -> dict:
    """``fl-ee run`` of the reference workload: steady state, startup, and work."""
    args, _ = workload()
    watched = watch_run(args, tmp / "fl-ee", memory_every_s=None)  # no memory readings: the peer has none
    rounds = read_rounds(tmp / "fl-ee")
    cfg = load_config(str(tmp / "fl-ee" / "config.toml"))
    trained = [[c["client_id"] for c in r["clock"]["clients"] if c["outcome"] in ("ok", "late")] for r in rounds]
    evaluated = [r.get("evaluate", {}).get("clients", []) for r in rounds]
    return {"steady_state_s": round(rounds[-1]["wall_s"] - rounds[0]["wall_s"], 2),
            "startup_s": round(watched.round_seen_at[1] - rounds[0]["wall_s"] - watched.started, 2),
            "work_gflop": round(work_flops(cfg, trained, evaluated) / 1e9, 1)}


def peer_side() -> dict:
    """The peer in a child process: steady state, startup, and work."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.flower_peer", "--peer"], capture_output=True,
                          text=True, check=True)
    child = json.loads(done.stdout.strip().splitlines()[-1])
    if len(child["train"]) != len(child["ends_s"]):
        raise SystemExit(f"the peer's clients failed in some rounds: {child}")
    cfg = preflight(load_config(PRESET, overrides()[0]))
    ends = child["ends_s"]
    return {"steady_state_s": round(ends[-1] - ends[0], 2),
            "work_gflop": round(work_flops(cfg, child["train"], child["evaluate"]) / 1e9, 1)}


def main() -> None:
    """Run both sides ``--repeat`` times, interleaved, and print the comparison."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--peer", action="store_true", help="(internal) run the peer and print its timings")
    args = parser.parse_args()
    if args.peer:  # by its module's name, so Ray's workers find the peer's ClientApp (not in __main__)
        from benchmarks import flower_peer

        print(json.dumps(flower_peer.run_peer()))
        return
    runs: dict[str, list[dict]] = {"fl_ee": [], "flower": []}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            runs["fl_ee"].append(fl_ee_side(Path(tmp)))
        runs["flower"].append(peer_side())
    mean = {side: statistics.mean(r["steady_state_s"] for r in rs) for side, rs in runs.items()}
    per_flop = {side: statistics.mean(r["steady_state_s"] / r["work_gflop"] for r in rs) for side, rs in runs.items()}
    _, dataset = overrides()
    print(json.dumps({
        "workload": {"dataset": dataset, "preset": PRESET, "see": "benchmarks/overhead.py"},
        "runs": runs,
        "steady_state_s": {side: round(v, 2) for side, v in mean.items()},
        "ratio_steady": round(mean["fl_ee"] / mean["flower"], 3),
        "ratio_steady_per_flop": round(per_flop["fl_ee"] / per_flop["flower"], 3),
    }, indent=1))


if __name__ == "__main__":
    main()
