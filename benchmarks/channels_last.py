"""``simulation.channels_last`` against the default memory order: seconds per round, what it changes; one JSON object.

The same preset runs twice through ``fl-ee run``, once with each order, for ``--rounds``
rounds with no client evaluation (the global model evaluated after the last round).
Seconds per round: the median of rounds 3 to the last but one, from ``rounds.jsonl``.
What it changes: the largest difference of one client's update between the two orders
(the same received weights, data and batches), then the global accuracy of both runs
after the last round; the runs' trajectories part from the first round on, as runs whose
floating-point sums round differently do.

    .venv/bin/python -m benchmarks.channels_last                          # fmnist-3tiers, ~3 min
    .venv/bin/python -m benchmarks.channels_last --preset cifar10-resnet --data-root /tmp/data/cifar10   # ~3 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks._proc import SHARED_DATA, read_rounds, watch_run
from fl_ee.core.config import load_config
from fl_ee.data.datasets import client_data
from fl_ee.learning.training import train_joint
from fl_ee.models import build_model
from strategies import network_spec


def run(preset: str, root: Path, rounds: int, channels_last: bool) -> dict:
    """One ``fl-ee run`` of ``preset`` in the given order: seconds per round and the final global accuracy."""
    args = [preset, "--set", f"data.root={root}", "--set", f"rounds={rounds}", "--set", f"eval_every={rounds}",
            "--set", "strategy.fraction_evaluate=0", "--set", "strategy.final_evaluate_all=false",
            "--set", f"simulation.channels_last={str(channels_last).lower()}"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        watch_run(args, out, memory_every_s=None)
        ended = [r["wall_s"] for r in read_rounds(out)]
        summary = json.loads((out / "summary.json").read_text())
    per_round = [b - a for a, b in zip(ended, ended[1:])][1:-1]
    return {"s_per_round": round(statistics.median(per_round), 3),
            "global_by_exit": summary["accuracy"]["global"]["by_exit"]}


def update_difference(preset: str, root: Path) -> float:
    """The largest absolute difference of one deepest client's two-epoch update between the two orders."""
    cfg = load_config(preset, {"data.root": str(root)})
    torch.set_num_threads(1)
    x, y, _, _ = client_data(cfg, 0)
    torch.manual_seed(cfg.seed)
    weights = build_model(network_spec(cfg), cfg.max_depth).state_dict()
    updates = []
    for channels_last in (False, True):
        model = build_model(network_spec(cfg), cfg.max_depth)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        model.load_state_dict(weights)
        train_joint(model, x, y, cfg.training, torch.Generator().manual_seed(0), cfg.training.local_epochs)
        updates.append(model.state_dict())
    return max(float((updates[0][k].float() - updates[1][k].float()).abs().max()) for k in updates[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="fmnist-3tiers")
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    if args.rounds < 4:
        raise SystemExit("--rounds must be at least 4")
    root = args.data_root.expanduser().resolve()
    default, fast = (run(args.preset, root, args.rounds, order) for order in (False, True))
    print(json.dumps({"preset": args.preset, "rounds": args.rounds, "default": default, "channels_last": fast,
                      "speedup": round(default["s_per_round"] / fast["s_per_round"], 3),
                      "update_max_abs_difference": update_difference(args.preset, root)}, indent=1))


if __name__ == "__main__":
    main()
