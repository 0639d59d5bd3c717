"""Cost of a network per stage and per exit, measured with ``torch.utils.flop_counter``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from fl_ee.models.cnn import EarlyExitCNN, ModelSpec


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


def _count(module: torch.nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    with FlopCounterMode(display=False) as counter:
        y = module(x)
    return counter.get_total_flops(), y


_MEASURED: dict[tuple[ModelSpec, int], Flops] = {}  # the cost depends on the architecture, not the weights


def measure_flops(model: EarlyExitCNN) -> Flops:
    """Count one sample's forward FLOPs through each stage and each exit head (once per spec and depth)."""
    key = (model.spec, len(model.stages))
    if key not in _MEASURED:
        _MEASURED[key] = _measure(model)
    return _MEASURED[key]


@torch.no_grad()
def _measure(model: EarlyExitCNN) -> Flops:
    spec = model.spec
    x = torch.zeros(1, spec.in_channels, spec.image_height, spec.image_width)
    stages, exits = [], []
    for stage, head in zip(model.stages, model.exits):
        flops, x = _count(stage, x)
        stages.append(flops)
        exits.append(_count(head, x)[0])
    return Flops(tuple(stages), tuple(exits))
