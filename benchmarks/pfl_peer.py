"""fl-ee against Apple's pfl-research on cross-device workloads; prints one JSON object.

Both sides train the same network on the same client datasets with the same local work:
Fashion-MNIST, fl-ee's default ``cnn`` at full depth (every client holds all four exits:
one tier, always available, never failing), the sum of the exits' cross-entropies
(``training.scheme = e2e``, ``distillation = none``), no personal step
(``personalisation.mode = none``), one local epoch of SGD, batch 32, lr 0.05, no
momentum, and example-weighted federated averaging. Three workloads, each client's data
being its train split of fl-ee's own IID partition (``data.test_fraction`` 0.2 held out):
100 clients of 480 samples, 10 a round; 1,000 clients of 48 samples, 50 a round; 10,000
clients of 4-5 samples, 100 a round (the cross-device scale point: its ``fl_ee_to_floor``).

- fl-ee: ``fl-ee run`` of that config (strategy ``depthfl``, which over one tier is
  FedAvg weighted by examples; the global model evaluated on the test set after the
  last round only; every other setting its default, so a checkpoint every round and
  the whole run directory, as a user gets them).
- pfl (``pfl`` 0.6.0, ``pip install -e .[bench]``): one process, torch threads = cores
  (``--pfl-threads``), ``SimulatedBackend`` with ``WeightByDatapoints``,
  ``FederatedAveraging`` (central SGD at lr 1), pfl's ``PyTorchModel`` over fl-ee's
  network built by fl-ee's own code from the same seed (same initial weights) with
  fl-ee's loss (``exit_loss``); a ``FederatedDataset`` of the same clients' tensors
  (``client_data``), users drawn by pfl's ``MinimizeReuseUserSampler`` over a seeded
  shuffle (distinct users in a round); the same test set evaluated once after the last
  round with pfl's ``evaluate``.

Each side runs ``--rounds`` rounds (10) once, in a fresh process, and notes the time each
round ends (fl-ee: ``wall_s`` in ``rounds.jsonl``; pfl: a callback after each central
iteration). Seconds per round = the median of rounds 3 to N-1 (their mean beside it):
start-up, the first two rounds (imports on first use, pfl's evaluation of its first
cohort) and the final evaluation (fl-ee's in round N, pfl's after its loop) fall outside,
and one round that another process slowed does not move it. (A first version
took the difference of a 3-round and a 9-round run's process wall times: pfl's first
process paid seconds that its second did not, and the difference was negative or near 0.)
What each side did is counted per round: clients trained, samples, SGD steps (fl-ee:
``local_steps`` of each trained client's samples; pfl: calls of the loss).

The compute floor: the same round's local work (the first sampled-size set of clients'
data, one epoch each, fl-ee's loss, plain SGD, no federated machinery at all) timed on one
torch thread (best of three), divided by the cores. ``floor_to_pfl`` is the least
``fl-ee / pfl`` ratio this machine allows. ``split`` fits ``s/round = clients x a + steps x b``
through the first two workloads' figures (``FIT``), per side: ``a`` is the cost per client
beyond its SGD steps.

Where the two differ in what they compute (not in how much):
- Batches: both keep the last partial batch (``ceil(n / 32)`` steps a client); fl-ee
  draws a new order each round (``torch.randperm``), pfl takes a user's samples in
  their stored order every time.
- Clients: each side samples its own; the IID clients are (nearly) the same size (480,
  48 or 4-5), so a round is the same work on both; the counts above show it.
- pfl's loop evaluates its first round's cohort before and after local training
  (iteration 0 always evaluates); that round is outside the timed ones.

Run it on a quiet machine. pfl's torch threads wait for each other at every operation
(fl-ee's clients run one thread each): with other jobs on the two cores here, one pfl
round of the 100-client workload took over 400 s on two threads (``--pfl-threads 1``
then, said in the JSON).

    .venv/bin/python -m benchmarks.pfl_peer [--data-root ../shared/data] [--only 1000 10000] [--pfl-threads N]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import tomli_w
import torch

from benchmarks._proc import SHARED_DATA, read_rounds, watch_run
from fl_ee.core.config import Config, TrainingConfig, load_config
from fl_ee.learning.training import EVAL_BATCH, correct, exit_loss, local_steps

MISSING_PFL = "benchmarks.pfl_peer needs pfl-research: pip install -e .[bench]"


@dataclass(frozen=True)
class Workload:
    """Registered clients and clients trained each round."""

    clients: int
    per_round: int

    @property
    def name(self) -> str:
        return f"{self.clients} clients, {self.per_round} per round"


WORKLOADS = {"100": Workload(100, 10), "1000": Workload(1000, 50), "10000": Workload(10000, 100)}
FIT = ("100", "1000")  # the workloads ``split`` fits through


def workload_config(workload: Workload, rounds: int, data_root: Path) -> dict:
    """The run config both sides train, as plain values (TOML for ``fl-ee run``).

    No ``tiers`` table: fl-ee's default, one tier holding every exit, always available, never failing.
    """
    return {
        "seed": 0, "rounds": rounds, "eval_every": rounds,
        "data": {"name": "fashion-mnist", "root": str(data_root), "num_clients": workload.clients,
                 "partitioner": "iid"},
        "model": {"backbone": "cnn"},
        "training": {"scheme": "e2e", "local_epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.0,
                     "distillation": "none"},
        "personalisation": {"mode": "none"},
        "strategy": {"name": "depthfl", "fraction_train": workload.per_round / workload.clients,
                     "fraction_evaluate": 0.0},
    }


def write_config(raw: dict, folder: Path) -> Path:
    """``raw`` as a TOML file in ``folder``."""
    path = folder / f"config-{raw['data']['num_clients']}-{raw['rounds']}.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


# ------------------------------------------------------------------------------- fl-ee


def fl_ee_run(config: Path, out: Path) -> dict:
    """``fl-ee run CONFIG``: when each round ended, what it trained each round, and the final test accuracy."""
    watch_run([str(config)], out, memory_every_s=None)
    cfg = load_config(str(out / "config.toml"))
    with open(out / "clients.csv") as handle:
        num_train = {int(row["client_id"]): int(row["num_train"]) for row in csv.DictReader(handle)}
    rounds = read_rounds(out)
    trained = [[c["client_id"] for c in r["clock"]["clients"] if c["outcome"] == "ok"] for r in rounds]
    by_exit = json.loads((out / "summary.json").read_text())["accuracy"]["global"]["by_exit"]
    return {"ended_s": [r["wall_s"] for r in rounds],
            "clients": [len(ids) for ids in trained],
            "samples": [sum(num_train[c] for c in ids) for ids in trained],
            "steps": [sum(local_steps(num_train[c], cfg.training) for c in ids) for ids in trained],
            "test_accuracy": by_exit[str(len(by_exit))]}


# ------------------------------------------------------------------------------- pfl


class ExitsLoss(torch.nn.Module):
    """fl-ee's network with the ``loss`` and ``metrics`` pfl's ``PyTorchModel`` calls; counts its training batches."""

    def __init__(self, net: torch.nn.Module, training: TrainingConfig) -> None:
        super().__init__()
        self.net = net
        self.training_cfg = training
        self.steps = 0
        self.samples = 0

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """fl-ee's local objective of one batch (:func:`~fl_ee.learning.training.exit_loss`)."""
        self.net.train()
        self.steps, self.samples = self.steps + 1, self.samples + len(y)
        return exit_loss(self.net(x), y, self.training_cfg)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Each exit's accuracy over the batch, as pfl's weighted metric values."""
        from pfl.metrics import Weighted

        self.net.eval()
        return {f"exit{i} accuracy": Weighted(correct(z, y), len(y)) for i, z in enumerate(self.net(x), 1)}


def pfl_train(cfg: Config, threads: int) -> dict:
    """pfl-research trains ``cfg``'s workload here, on ``threads`` torch threads: what it did, the test accuracy."""
    import numpy as np
    from pfl.aggregate.base import get_num_devices_weight_name
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.common_types import Population
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import MinimizeReuseUserSampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics
    from pfl.model.pytorch import PyTorchModel  # also makes PyTorch pfl's framework

    from fl_ee.data.datasets import client_data, load_dataset
    from fl_ee.federation.server import initial_model

    torch.set_num_threads(threads)
    np.random.seed(cfg.seed)
    data = load_dataset(cfg.data)
    users = {cid: client_data(cfg, cid)[:2] for cid in range(cfg.data.num_clients)}
    order = np.random.default_rng(cfg.seed).permutation(cfg.data.num_clients).tolist()
    federated = FederatedDataset.from_slices(users, MinimizeReuseUserSampler(order))
    wrapped = ExitsLoss(initial_model(cfg, data), cfg.training)
    t = cfg.training
    model = PyTorchModel(
        wrapped,
        local_optimizer_create=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=t.momentum,
                                                                  weight_decay=t.weight_decay),
        central_optimizer=torch.optim.SGD(wrapped.parameters(), lr=1.0))
    done: dict[str, list] = {"clients": [], "samples": [], "steps": [], "ended_s": []}

    class Counted(TrainingProcessCallback):
        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            done["clients"].append(int(aggregate_metrics[get_num_devices_weight_name(Population.TRAIN)]))
            done["samples"].append(wrapped.samples)
            done["steps"].append(wrapped.steps)
            done["ended_s"].append(round(time.perf_counter() - started, 3))
            wrapped.samples = wrapped.steps = 0
            return False, Metrics()

    per_round = round(cfg.strategy.fraction_train * cfg.data.num_clients)
    evaluation = NNEvalHyperParams(local_batch_size=EVAL_BATCH)
    started = time.perf_counter()
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=cfg.rounds, evaluation_frequency=cfg.rounds,
                                           train_cohort_size=per_round, val_cohort_size=0),
        backend=SimulatedBackend(training_data=federated, val_data=federated, postprocessors=[WeightByDatapoints()]),
        model=model,
        model_train_params=NNTrainHyperParams(local_learning_rate=t.lr, local_num_epochs=t.local_epochs,
                                              local_batch_size=t.batch_size),
        model_eval_params=evaluation, callbacks=[Counted()])
    final = model.evaluate(Dataset((data.test_x, data.test_y)), eval_params=evaluation)
    return {**done, "test_accuracy": round(final[f"exit{cfg.max_depth} accuracy"].overall_value, 4)}


def pfl_run(config: Path, threads: int) -> dict:
    """pfl's side in a fresh process: when each round ended and what it did."""
    command = [sys.executable, "-m", "benchmarks.pfl_peer", "--pfl", str(config), "--pfl-threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the pfl side failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- the floor


def floor_s(cfg: Config, per_round: int, repeats: int = 3) -> float:
    """One round's local work without any federated machinery, on one torch thread: best of ``repeats``.

    ``per_round`` clients' own data, one epoch each in batches in stored order, fl-ee's loss,
    plain SGD on a fresh optimizer per client, over one network.
    """
    from fl_ee.data.datasets import client_data, load_dataset
    from fl_ee.federation.server import initial_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = initial_model(cfg, load_dataset(cfg.data))
        t = cfg.training
        data = [client_data(cfg, cid)[:2] for cid in range(per_round)]
        best = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            for x, y in data:
                optimizer = torch.optim.SGD(net.parameters(), lr=t.lr, momentum=t.momentum)
                for i in range(0, len(y), t.batch_size):
                    optimizer.zero_grad()
                    exit_loss(net(x[i:i + t.batch_size]), y[i:i + t.batch_size], t).backward()
                    optimizer.step()
            best = min(best, time.perf_counter() - started)
        return best
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------- the comparison


WARM = 2  # rounds before the timed window: imports on first use, pfl's evaluation of its first cohort


def round_seconds(ended_s: list[float]) -> list[float]:
    """Each round's seconds, from the times rounds ended (the first from the start)."""
    return [b - a for a, b in zip([0.0, *ended_s], ended_s)]


def timed_rounds(ended_s: list[float]) -> list[float]:
    """Seconds of rounds ``WARM + 1`` to the last but one (not its evaluation), from the times rounds ended."""
    return round_seconds(ended_s)[WARM:-1]


def side(run: dict) -> dict:
    """One side of one workload: s/round (median and mean of the timed rounds), each round's seconds, what it did."""
    timed = timed_rounds(run["ended_s"])
    return {"s_per_round": round(statistics.median(timed), 3), "mean_s_per_round": round(statistics.fmean(timed), 3),
            "round_s": [round(s, 3) for s in round_seconds(run["ended_s"])],
            "per_round": {key: run[key] for key in ("clients", "samples", "steps")},
            "test_accuracy": run["test_accuracy"]}


def split(rounds: list[dict]) -> dict:
    """``s/round = clients x a + steps x b`` through two workloads (each: s_per_round, clients, steps)."""
    (t1, c1, n1), (t2, c2, n2) = [(r["s_per_round"], r["clients"], r["steps"]) for r in rounds]
    det = c1 * n2 - c2 * n1
    a, b = (t1 * n2 - t2 * n1) / det, (c1 * t2 - c2 * t1) / det
    return {"ms_per_client_beyond_steps": round(1000 * a, 1), "ms_per_sgd_step": round(1000 * b, 2)}


def compare(workload: Workload, data_root: Path, rounds: int, threads: int, tmp: Path) -> dict:
    """Both sides of one workload (fl-ee first: it writes the data caches both read), then the floor."""
    config = write_config(workload_config(workload, rounds, data_root), tmp)
    result = {"fl_ee": side(fl_ee_run(config, tmp / f"run-{workload.clients}")), "pfl": side(pfl_run(config, threads))}
    cores = os.cpu_count() or 1
    floor = floor_s(load_config(str(config)), workload.per_round) / cores
    fl_ee, pfl = result["fl_ee"]["s_per_round"], result["pfl"]["s_per_round"]
    return {"clients": workload.clients, "per_round": workload.per_round, **result,
            "floor_s_per_round": round(floor, 3), "ratio_fl_ee_to_pfl": round(fl_ee / pfl, 3),
            "floor_to_pfl": round(floor / pfl, 3), "fl_ee_to_floor": round(fl_ee / floor, 3),
            "fl_ee_ms_per_client_beyond_floor": round(1000 * (fl_ee - floor) / workload.per_round, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA, help="the folder holding FashionMNIST/raw")
    parser.add_argument("--rounds", type=int, default=10, help=f"rounds each side runs (at least {WARM + 3})")
    parser.add_argument("--only", choices=sorted(WORKLOADS), nargs="+", help="these workloads (default: all)")
    parser.add_argument("--pfl-threads", type=int, default=os.cpu_count() or 1, help="pfl's torch threads (cores)")
    parser.add_argument("--pfl", type=Path, help="(internal) run pfl's side of this config and print what it did")
    args = parser.parse_args()
    if importlib.util.find_spec("pfl") is None:
        raise SystemExit(MISSING_PFL)
    if args.pfl:
        print(json.dumps(pfl_train(load_config(str(args.pfl)), args.pfl_threads)))
        return
    root = args.data_root.expanduser().resolve()
    if not (root / "FashionMNIST" / "raw").is_dir():
        raise SystemExit(f"no Fashion-MNIST under {root} (expected FashionMNIST/raw); give --data-root")
    if args.rounds < WARM + 3:
        raise SystemExit(f"--rounds must be at least {WARM + 3}")
    if args.pfl_threads < 1:
        raise SystemExit("--pfl-threads must be at least 1")
    chosen = {name: WORKLOADS[name] for name in args.only or WORKLOADS}
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: compare(w, root, args.rounds, args.pfl_threads, Path(tmp)) for name, w in chosen.items()}
    raw = workload_config(next(iter(chosen.values())), args.rounds, root)
    setup = {key: raw[key] for key in ("model", "training", "personalisation")}
    report: dict = {
        "setup": {"data": {key: raw["data"][key] for key in ("name", "partitioner")}, **setup,
                  "rounds": args.rounds, "timed_rounds": [WARM + 1, args.rounds - 1], "cores": os.cpu_count(),
                  "pfl": version("pfl"), "pfl_threads": args.pfl_threads,
                  "see": "benchmarks/pfl_peer.py"},
        "workloads": {chosen[name].name: result for name, result in results.items()},
    }
    if all(name in results for name in FIT):
        report["split"] = {s: split([{"s_per_round": results[n][s]["s_per_round"],
                                      "clients": results[n][s]["per_round"]["clients"][-1],
                                      "steps": results[n][s]["per_round"]["steps"][-1]} for n in FIT])
                           for s in ("fl_ee", "pfl")}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
