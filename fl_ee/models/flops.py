"""Cost of a network per stage and per exit, measured with ``torch.utils.flop_counter``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

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
    with FlopCounterMode(display=False) as counter:
        y = module(x)
    return counter.get_total_flops(), y


def _sample(spec: ModelSpec) -> torch.Tensor:
    return torch.zeros(1, spec.in_channels, spec.image_height, spec.image_width)


_MEASURED: dict[tuple[ModelSpec, int, float], Flops] = {}  # the cost depends on the architecture, not the weights


def measure_flops(model: EarlyExitNet) -> Flops:
    """Count one sample's forward FLOPs through each stage and each exit head (once per spec, depth and width)."""
    key = (model.spec, len(model.stages), model.width)
    if key not in _MEASURED:
        _MEASURED[key] = _measure(model)
    return _MEASURED[key]


def submodel_flops(spec: ModelSpec, depth: int | None = None, width: float = 1.0) -> Flops:
    """:func:`measure_flops` of the depth-``depth`` (default: full), width-``width`` network.

    The network is built only if not yet measured; building it draws initial weights, and
    torch's global generator is left as it was.
    """
    key = (spec, spec.num_exits if depth is None else depth, width)
    if key not in _MEASURED:
        with torch.random.fork_rng(devices=[]):
            _MEASURED[key] = _measure(build_model(spec, depth, width))
    return _MEASURED[key]


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
