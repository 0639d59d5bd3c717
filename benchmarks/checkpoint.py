"""The cost of checkpoints on the Fashion-MNIST preset; prints one JSON object.

Runs what ``fl-ee run sims/presets/fmnist-3tiers.toml --set data.root=../shared/data
--set rounds=5 --set checkpoint_every=N`` runs (the same ServerApp, ClientApp and Ray
engine, without the progress bar), each in a child process, for:

* ``none``: no checkpoints and no client files (fl-ee before checkpoints);
* ``every=1000``: clients save their personal exits each round, the server checkpoints
  once, after the last round;
* ``every=1``: a checkpoint after every round.

For each: the wall time of rounds 2..5 (from ``rounds.jsonl``; round 1 includes Ray's
start-up) and the seconds each checkpoint took to write, timed inside the observer.

    .venv/bin/python -m benchmarks.checkpoint [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._proc import REPO, SHARED_DATA

PRESET = REPO / "sims" / "presets" / "fmnist-3tiers.toml"
ROUNDS = 5
VARIANTS = ("none", "1000", "1")


def child(variant: str, out: Path) -> dict:
    """One run in this process; its timings."""
    from fl_ee.core.config import load_config
    from fl_ee.federation.checkpoint import Checkpoints
    from fl_ee.federation.client import app as client_app
    from fl_ee.federation.preflight import preflight
    from fl_ee.federation.server import make_server_app
    from fl_ee.results.rundir import RunDir
    from sims.engine import simulate

    every = 1 if variant == "none" else int(variant)
    overrides = {"data.root": str(SHARED_DATA), "rounds": ROUNDS, "checkpoint_every": every}
    cfg = preflight(load_config(str(PRESET), overrides))
    run_dir = RunDir.create(out)
    checkpoints = None if variant == "none" else Checkpoints(out)
    started = time.perf_counter()
    simulate(make_server_app(cfg, [run_dir], checkpoints), client_app, cfg)
    walls = [json.loads(line)["wall_s"] for line in (out / "rounds.jsonl").read_text().splitlines()]
    return {
        "variant": variant,
        "command_s": round(time.perf_counter() - started, 2),
        "rounds_2_5_s": round(walls[-1] - walls[0], 3),
        "checkpoint_write_s": [round(s, 4) for s in (checkpoints.write_s if checkpoints else [])],
        "checkpoint_bytes": sum(p.stat().st_size for p in (out / "checkpoint").rglob("*") if p.is_file())
        if checkpoints else 0,
    }


def main() -> None:
    """Run every variant ``--repeat`` times, interleaved, and print the summary."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.out))))
        return
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for variant in VARIANTS:
                out = Path(tmp) / f"{variant}-{i}"
                done = subprocess.run([sys.executable, "-m", "benchmarks.checkpoint", "--child", variant,
                                       "--out", str(out)], capture_output=True, text=True, check=True)
                runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    every1 = runs["1"]
    writes = [s for r in every1 for s in r["checkpoint_write_s"]]
    per_round = statistics.mean(r["rounds_2_5_s"] for r in every1) / (ROUNDS - 1)
    print(json.dumps({
        "runs": runs,
        "rounds_2_5_s": {v: statistics.mean(r["rounds_2_5_s"] for r in rs) for v, rs in runs.items()},
        "checkpoint_write_s": {"mean": statistics.mean(writes), "max": max(writes)},
        "checkpoint_share_of_round": statistics.mean(writes) / per_round,
        "every1_vs_every1000": statistics.mean(r["rounds_2_5_s"] for r in every1)
        / statistics.mean(r["rounds_2_5_s"] for r in runs["1000"]) - 1,
        "every1000_vs_none": statistics.mean(r["rounds_2_5_s"] for r in runs["1000"])
        / statistics.mean(r["rounds_2_5_s"] for r in runs["none"]) - 1,
    }, indent=1))


if __name__ == "__main__":
    main()
