"""fl-ee with 1,000 and with 10,000 registered clients, 100 per round, 20 rounds; prints one JSON object.

For each size: seconds per round, the peak memory of the whole process tree (driver, Ray
and its workers; proportional set size, so shared libraries count once), and the memory
after round 5 and after round 20. The cost of a round should follow the clients sampled,
not the clients registered: the two sizes' seconds per round and memory stay close, and
memory does not grow over rounds. (The same 60,000 images are split over 10x as many
clients at 10,000, so each sampled client there holds a tenth of the data.)

Workload: Fashion-MNIST from ../shared/data (no fallback: digits has too few samples),
an IID split (Dirichlet 0.5 leaves clients without samples at 10,000), three tiers of
depth 2/3/4, width-8 CNN, one local epoch, batch 32; 100 clients evaluated every 5 rounds.

    .venv/bin/python -m benchmarks.scale [--clients 1000 10000]     # ~4 min on a quiet 2-core machine
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks._proc import SHARED_DATA, read_rounds, watch_run

ROUNDS, PER_ROUND = 20, 100


def run(clients: int) -> dict:
    """One ``fl-ee run`` with ``clients`` registered: its timings and memory."""
    args = ["fmnist-3tiers", "--set", f"data.root={SHARED_DATA}"]
    for key, value in {
        "rounds": ROUNDS, "eval_every": 5, "data.num_clients": clients, "data.partitioner": "iid", "model.width": 8,
        "training.local_epochs": 1, "training.batch_size": 32, "personalisation.epochs": 1,
        "strategy.fraction_train": PER_ROUND / clients, "strategy.fraction_evaluate": PER_ROUND / clients,
    }.items():
        args += ["--set", f"{key}={value}"]
    for i in range(3):
        args += ["--set", f"tiers.{i}.availability=1.0", "--set", f"tiers.{i}.failure_rate=0.0"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        watched = watch_run(args, out)
        rounds = read_rounds(out)
    per_round = [b["wall_s"] - a["wall_s"] for a, b in zip(rounds, rounds[1:])]
    rss5, rss20 = watched.rss_at_round[5], watched.rss_at_round[ROUNDS]
    return {
        "clients": clients,
        "wall_s": round(watched.ended - watched.started, 2),
        "startup_s": round(watched.round_seen_at[1] - rounds[0]["wall_s"] - watched.started, 2),
        "seconds_per_round": {"mean": round(sum(per_round) / len(per_round), 2),
                              "first": round(rounds[0]["wall_s"], 2), "max": round(max(per_round), 2)},
        "peak_memory_mb": round(watched.peak_rss / 2**20, 1),
        "memory_after_round_5_mb": round(rss5 / 2**20, 1),
        "memory_after_round_20_mb": round(rss20 / 2**20, 1),
        "growth_5_to_20": round(rss20 / rss5 - 1, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    if not (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
        raise SystemExit(f"benchmarks/scale.py needs Fashion-MNIST under {SHARED_DATA}")
    runs = [run(n) for n in args.clients]
    report: dict = {"workload": {"dataset": "fashion-mnist", "partitioner": "iid", "clients_per_round": PER_ROUND,
                                 "rounds": ROUNDS, "model_width": 8},
                    "runs": runs}
    if len(runs) > 1:
        small, large = runs[0], runs[-1]
        report[f"seconds_per_round_{large['clients']}_vs_{small['clients']}"] = round(
            large["seconds_per_round"]["mean"] / small["seconds_per_round"]["mean"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
