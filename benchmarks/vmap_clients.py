"""Would vectorised training of same-depth clients pay? Sequential SGD against ``vmap``; prints one JSON object.

A way below the sequential compute floor, if it pays: clients of one depth start a
round from the same weights, so a cohort's SGD steps could run as one batched call
(``functional_call`` + ``grad`` under ``vmap`` over stacked per-client weights). This
times both on fl-ee's default ``cnn`` (full depth, Fashion-MNIST images, its loss
``exit_loss`` without distillation, plain SGD at lr 0.05), for cohorts of ``C`` clients
each taking ``--steps`` steps of ``B`` samples (its own images):

- ``sequential``: fl-ee's way, one client after the other on one network;
- ``vmap``: all ``C`` clients' steps at once, weights stacked along a leading dimension.

``ratio`` = vmap / sequential time (below 1: vectorising pays); ``max_abs_diff``: the
largest difference between the two methods' weights after the steps (float rounding:
batched convolutions sum in another order). One torch thread on the CPU (an fl-ee client's
share, ``simulation.client_cpus = 1``), or ``--device cuda``.

    .venv/bin/python -m benchmarks.vmap_clients [--data-root ../shared/data] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad_and_value, vmap

from benchmarks._proc import SHARED_DATA
from fl_ee.core.config import config_from_dict
from fl_ee.data.datasets import load_dataset
from fl_ee.federation.server import initial_model
from fl_ee.learning.training import exit_loss

COHORTS = [(1, 32), (5, 32), (12, 32), (25, 32), (12, 16), (25, 5), (50, 5)]  # (clients, samples a step)
LR = 0.05


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, clients: int, batch: int, steps: int,
            device: torch.device) -> dict:
    """Both methods on ``clients`` x ``steps`` batches of ``batch`` images: seconds a step, the weights' gap."""
    training = config_from_dict({}).training.model_copy(update={"distillation": "none", "lr": LR, "momentum": 0.0})
    need = clients * steps * batch
    x = images[:need].reshape(steps, clients, batch, *images.shape[1:]).to(device)
    y = labels[:need].reshape(steps, clients, batch).to(device)
    start = {k: v.detach().to(device, copy=True) for k, v in net.named_parameters()}
    model = copy.deepcopy(net).to(device)  # trained in place by the sequential method

    def sequential() -> dict[str, torch.Tensor]:
        ends = []
        for c in range(clients):
            with torch.no_grad():
                for k, p in model.named_parameters():
                    p.copy_(start[k])
            optimizer = torch.optim.SGD(model.parameters(), lr=LR)
            for s in range(steps):
                optimizer.zero_grad()
                exit_loss(model(x[s, c]), y[s, c], training).backward()
                optimizer.step()
            ends.append({k: p.detach().clone() for k, p in model.named_parameters()})
        return {k: torch.stack([end[k] for end in ends]) for k in start}

    def loss(params: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return exit_loss(functional_call(model, params, (inputs,)), targets, training)

    step = vmap(grad_and_value(loss))

    def vectorised() -> dict[str, torch.Tensor]:
        params = {k: v.expand(clients, *v.shape).clone() for k, v in start.items()}
        for s in range(steps):
            grads, _ = step(params, x[s], y[s])
            params = {k: params[k] - LR * grads[k] for k in params}
        return params

    times = {}
    for name, method in (("sequential", sequential), ("vmap", vectorised)):
        method()  # warm-up: first-use kernels and allocations
        _sync(device)
        started = time.perf_counter()
        result = method()
        _sync(device)
        times[name] = (time.perf_counter() - started) / steps
        if name == "sequential":
            reference = result
    gap = max(float((result[k] - reference[k]).abs().max()) for k in start)
    return {"clients": clients, "batch": batch, "sequential_s_per_step": round(times["sequential"], 5),
            "vmap_s_per_step": round(times["vmap"], 5), "ratio": round(times["vmap"] / times["sequential"], 3),
            "max_abs_diff": gap}


def main() -> None:
    """Parse the flags, time every cohort shape, print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    cfg = config_from_dict({"data": {"name": "fashion-mnist", "root": str(args.data_root)}})
    dataset = load_dataset(cfg.data)
    net = initial_model(cfg, dataset)
    images, labels = dataset.train_x, dataset.train_y
    rows = [compare(net, images, labels, c, b, args.steps, device) for c, b in COHORTS]
    print(json.dumps({"device": str(device), "torch": torch.__version__, "steps": args.steps, "cohorts": rows},
                     indent=1))


if __name__ == "__main__":
    main()
