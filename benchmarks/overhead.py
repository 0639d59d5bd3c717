"""fl-ee against the compute floor on the reference workload; prints one JSON object.

1. ``fl-ee run`` (real Flower + Ray) on the reference workload; startup (command start to
   the first round: ``startup_s`` to the server's round loop, ``first_call_s`` to the first
   client call running on a Ray worker, seen every 0.1 s) is reported apart from the
   steady-state rounds 2..R.
2. The floor: the same clients' local training and evaluation, and the server's global
   evaluation, replayed from that run's ``rounds.jsonl`` in a plain PyTorch loop (the
   same model, data, batches and steps) in this process on one thread, divided by
   the number of cores (ideal parallelism, no framework).

``ratio_steady`` compares wall times (the target). ``ratio_steady_cpu`` compares CPU
seconds: those of fl-ee's whole process tree (driver, Ray, workers) over rounds 2..R
against the floor's own; other jobs on the machine move it much less than wall times.
This machine's speed drifts by 10-30% over minutes (the floor alone does), so the pair
is measured ``--repeat`` times (3) and the medians are the result; each pair is in ``runs``.

Reference workload: Fashion-MNIST from ../shared/data (digits when absent, said in the
JSON), 100 clients, Dirichlet 0.5, three tiers of depth 2/3/4, 10 clients per round
(training and evaluation), one local epoch, batch 32, 5 rounds, evaluation every round.

    .venv/bin/python -m benchmarks.overhead [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._proc import SHARED_DATA, read_rounds, watch_run
from fl_ee.core.config import Config, load_config
from fl_ee.core.seeding import Stream, derive_seed
from fl_ee.data.datasets import client_calibration, client_data, load_dataset
from fl_ee.deployment.deploy import policy_figures
from fl_ee.federation.client import model_spec
from fl_ee.learning.training import exit_logits, stage_features, train_exits, train_joint
from fl_ee.models import EarlyExitNet, submodel_flops

ROUNDS, CLIENTS, PER_ROUND = 5, 100, 0.1


PRESET = "fmnist-3tiers"


def overrides() -> tuple[dict[str, object], str]:
    """The reference workload as ``--set`` overrides of the preset, and the dataset it uses."""
    fmnist = (SHARED_DATA / "FashionMNIST" / "raw").is_dir()
    values: dict[str, object] = {"data.root": str(SHARED_DATA)} if fmnist else {"data.name": "digits"}
    values |= {
        "rounds": ROUNDS, "eval_every": 1, "data.num_clients": CLIENTS, "data.partitioner": "dirichlet",
        "data.alpha": 0.5, "training.local_epochs": 1, "training.batch_size": 32, "personalisation.epochs": 1,
        "strategy.fraction_train": PER_ROUND, "strategy.fraction_evaluate": PER_ROUND,
    }
    for i in range(3):  # every sampled client takes part, so both sides do the same work
        values |= {f"tiers.{i}.availability": 1.0, f"tiers.{i}.failure_rate": 0.0}
    return values, "fashion-mnist" if fmnist else "digits (fallback: no ../shared/data/FashionMNIST)"


def workload() -> tuple[list[str], str]:
    """``fl-ee run`` arguments of the reference workload, and the dataset it uses."""
    values, dataset = overrides()
    args = [PRESET]
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args, dataset


def floor_round(cfg: Config, record: dict, depth_of: dict[int, int]) -> float:
    """Seconds of one round's client work (and global evaluation) in plain PyTorch, one thread."""
    spec = model_spec(cfg)
    start = time.perf_counter()
    for client in record["clock"]["clients"]:
        if client["outcome"] not in ("ok", "late"):  # not sent any work
            continue
        cid = client["client_id"]
        x, y, _, _ = client_data(cfg, cid)
        model = EarlyExitNet(spec, depth_of[cid])
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, Stream.LOCAL_TRAINING, record["round"], cid))
        heads = torch.nn.ModuleList(EarlyExitNet(spec, depth_of[cid]).exits)
        train_exits(heads, stage_features(model, x), y, cfg.training, cfg.personalisation.epochs, generator)
        train_joint(model, x, y, cfg.training, generator)
    for cid in record.get("evaluate", {}).get("clients", []):
        _, _, x, y = client_data(cfg, cid)
        calib_x, calib_y = client_calibration(cfg, cid)
        model = EarlyExitNet(spec, depth_of[cid])
        costs = submodel_flops(spec, depth_of[cid]).exit_costs()
        policy_figures(exit_logits(model, calib_x), calib_y, exit_logits(model, x), y, costs, cfg.exit_policy,
                       cfg.max_depth)
    if "evaluate" in record:
        data = load_dataset(cfg.data)
        exit_logits(EarlyExitNet(spec, cfg.max_depth), data.test_x)
    return time.perf_counter() - start


def measure() -> dict:
    """One ``fl-ee run`` of the reference workload, then its floor replayed right after it."""
    args, dataset = workload()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        watched = watch_run(args, out, memory_every_s=None)  # memory: benchmarks/scale.py
        rounds = read_rounds(out)
        cfg = load_config(str(out / "config.toml"))
        with open(out / "clients.csv") as handle:
            depth_of = {int(r["client_id"]): int(r["depth"]) for r in csv.DictReader(handle)}

    loop_start = watched.round_seen_at[1] - rounds[0]["wall_s"]
    steady = rounds[-1]["wall_s"] - rounds[0]["wall_s"]
    calls = sum(sum(c["outcome"] in ("ok", "late") for c in r["clock"]["clients"])
                + len(r.get("evaluate", {}).get("clients", [])) for r in rounds[1:])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cores = os.cpu_count() or 1
    load_dataset(cfg.data)
    floor_round(cfg, rounds[0], depth_of)  # warm-up (data splits, allocator), not counted
    cpu_start = time.thread_time()
    floor_steady = sum(floor_round(cfg, r, depth_of) for r in rounds[1:]) / cores
    floor_cpu = time.thread_time() - cpu_start
    torch.set_num_threads(threads)
    steady_cpu = watched.cpu_at_round[ROUNDS] - watched.cpu_at_round[1]
    return {
        "dataset": dataset, "tiers_depth": [t.depth for t in cfg.tiers],
        "fl_ee": {"wall_s": round(watched.ended - watched.started, 2),
                  "startup_s": round(loop_start - watched.started, 2),
                  "first_call_s": None if watched.first_call_at is None
                  else round(watched.first_call_at - watched.started, 2),
                  "steady_state_s": round(steady, 2),
                  "steady_state_cpu_s": round(steady_cpu, 2),
                  "client_calls_steady": calls},
        "floor": {"steady_state_s": round(floor_steady, 2), "cpu_s": round(floor_cpu, 2), "cores": cores,
                  "threads": 1},
        "ratio_steady": round(steady / floor_steady, 3),
        "ratio_steady_cpu": round(steady_cpu / floor_cpu, 3),
        "overhead_ms_per_client_call": round(1000 * (steady - floor_steady) / max(calls, 1), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3, help="run/floor pairs; the medians are the result")
    repeat = max(1, parser.parse_args().repeat)
    pairs = [measure() for _ in range(repeat)]
    first_calls = [p["fl_ee"]["first_call_s"] for p in pairs if p["fl_ee"]["first_call_s"] is not None]  # None: missed
    print(json.dumps({
        "workload": {"dataset": pairs[0]["dataset"], "clients": CLIENTS,
                     "clients_per_round": round(PER_ROUND * CLIENTS), "rounds": ROUNDS,
                     "tiers_depth": pairs[0]["tiers_depth"], "batch_size": 32, "local_epochs": 1, "eval_every": 1},
        "startup_s": statistics.median(p["fl_ee"]["startup_s"] for p in pairs),
        "first_call_s": statistics.median(first_calls) if first_calls else None,
        "ratio_steady": statistics.median(p["ratio_steady"] for p in pairs),
        "ratio_steady_cpu": statistics.median(p["ratio_steady_cpu"] for p in pairs),
        "runs": [{k: v for k, v in p.items() if k not in ("dataset", "tiers_depth")} for p in pairs],
    }, indent=2))


if __name__ == "__main__":
    main()
