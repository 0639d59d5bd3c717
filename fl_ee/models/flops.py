"""Cost of a network per stage and per exit, measured with ``torch.utils.flop_counter``.

A measurement is kept in this process and on disk (``$FL_EE_CACHE/flops/``, keyed by the
network's spec, depth and width and torch's version; :func:`fl_ee.core.cache.cached`),
so the next process (a run after ``fl-ee check``, each Ray worker) neither counts again
nor imports the counter's dependencies (``torch._dynamo``, 1-5 s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from fl_ee.core.cache import cached
from fl_ee.models.network import EarlyExitNet, backbone_blocks, build_model
from fl_ee.models.spec import ModelSpec


@dataclass(frozen=True)
class Flops:
    """Forward FLOPs for one sample: ``stages[i]`` and ``exits[i]`` for block i."""

    stages: tuple[int, ...]
    exits: tuple[int, ...]

    def exit_costs(self) -> tuple[int, ...]:
        """FLOPs to leave at exit i: stages 1..i plus every exit head 1..i evaluated."""
        costs, total = [], 0
        for stage, head in zip(self.stages, self.exits):
            total += stage + head
            costs.append(total)
        return tuple(costs)


def training_flops(forward_flops: float, samples: int, epochs: int) -> float:
    """FLOPs of training end to end: 3 x forward x samples x epochs (forward + backward ~ 3 forwards)."""
    return 3.0 * forward_flops * samples * epochs


def _count(module: torch.nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    from torch.utils.flop_counter import FlopCounterMode  # imports torch._dynamo: only when counting

    with FlopCounterMode(display=False) as counter:
        y = module(x)
    return counter.get_total_flops(), y


def _sample(spec: ModelSpec) -> torch.Tensor:
    return torch.zeros(1, spec.in_channels, spec.image_height, spec.image_width)


_MEASURED: dict[tuple[ModelSpec, int, float], Flops] = {}  # the cost depends on the architecture, not the weights


def measure_flops(model: EarlyExitNet) -> Flops:
    """Count one sample's forward FLOPs through each stage and each exit head (once per spec, depth and width)."""
    return _flops(model.spec, len(model.stages), model.width, lambda: model)


def submodel_flops(spec: ModelSpec, depth: int | None = None, width: float = 1.0) -> Flops:
    """:func:`measure_flops` of the depth-``depth`` (default: full), width-``width`` network.

    The network is built only if not yet measured; building it draws initial weights, and
    torch's global generator is left as it was.
    """
    return _flops(spec, spec.num_exits if depth is None else depth, width, lambda: build_model(spec, depth, width))


def _flops(spec: ModelSpec, depth: int, width: float, network: Callable[[], EarlyExitNet]) -> Flops:
    """The measurement of this process, else of the disk cache, else of ``network()`` (built and measured now)."""
    key = (spec, depth, width)
    if key not in _MEASURED:
        def measure() -> Flops:
            with torch.random.fork_rng(devices=[]):
                return _measure(network())

        entry = {"spec": dataclasses.asdict(spec), "depth": depth, "width": width, "torch": torch.__version__}
        _MEASURED[key] = cached("flops", entry, measure, dataclasses.asdict, partial(_parsed, depth))
    return _MEASURED[key]


def _parsed(depth: int, body: Any) -> Flops:
    """The :class:`Flops` of a cached entry; ``ValueError`` unless it holds ``depth`` counts of each, none negative."""
    flops = Flops(tuple(body["stages"]), tuple(body["exits"]))
    counts = [*flops.stages, *flops.exits]
    if len(flops.stages) != depth or len(flops.exits) != depth or not all(
            type(c) is int and c >= 0 for c in counts):
        raise ValueError(f"expected {depth} FLOP counts of stages and of exits, got {body}")
    return flops


@torch.no_grad()
def _measure(model: EarlyExitNet) -> Flops:
    training = model.training
    model.eval()  # BatchNorm: no running statistics updated, a batch of one allowed
    x, stages, exits = _sample(model.spec), [], []
    for stage, head in zip(model.stages, model.exits):
        flops, x = _count(stage, x)
        stages.append(flops)
        exits.append(_count(head, x)[0])
    model.train(training)
    return Flops(tuple(stages), tuple(exits))


@torch.no_grad()
def block_flops(spec: ModelSpec) -> tuple[int, ...]:
    """One sample's forward FLOPs through each block of the whole backbone.

    Building the blocks draws initial weights; torch's global generator is left as it was.
    """
    x, flops = _sample(spec), []
    with torch.random.fork_rng(devices=[]):
        for block in backbone_blocks(spec):
            stage = torch.nn.Sequential(*(module for _, module in block)).eval()
            count, x = _count(stage, x)
            flops.append(count)
    return tuple(flops)


def parameter_count(module: torch.nn.Module) -> int:
    """Trainable and frozen parameters of a module (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def exit_table(model: EarlyExitNet) -> list[dict[str, int]]:
    """Per exit: its last block, its stage's and head's forward FLOPs and parameters, and the FLOPs to leave there."""
    flops = measure_flops(model)
    return [{"block": block, "stage_flops": flops.stages[i], "stage_params": parameter_count(model.stages[i]),
             "head_flops": flops.exits[i], "head_params": parameter_count(model.exits[i]),
             "exit_flops": flops.exit_costs()[i]}
            for i, block in enumerate(model.spec.exits[:model.depth])]
