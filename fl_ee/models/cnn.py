"""A small early-exit CNN: 4 stages, one exit head after each, any input size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

NUM_STAGES = 4
MLP_HIDDEN = 128


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build the same network on the server and every client."""

    in_channels: int
    image_height: int
    image_width: int
    num_classes: int
    base_width: int = 16
    exit_head: str = "mlp"

    @property
    def channels(self) -> tuple[int, ...]:
        """Output channels of stages 1..4: w, 2w, 4w, 4w."""
        w = self.base_width
        return (w, 2 * w, 4 * w, 4 * w)


def _stage(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(math.gcd(4, c_out), c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    return nn.Sequential(*layers)


def _exit_head(kind: str, channels: int, num_classes: int) -> nn.Sequential:
    if kind == "linear":  # global average pooling + linear classifier
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
    if kind == "mlp":  # 2x2 pooled features + a two-layer MLP
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * channels, MLP_HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(MLP_HIDDEN, num_classes),
        )
    raise ValueError(f"unknown exit head {kind!r}")


class EarlyExitCNN(nn.Module):
    """Stages 1..depth of the backbone, each followed by its exit head.

    ``forward`` returns the logits of every exit, shallowest first. Stages halve the
    spatial size while it is at least 2, so 8x8 digits and 32x32 images both fit.
    """

    def __init__(self, spec: ModelSpec, depth: int = NUM_STAGES) -> None:
        super().__init__()
        if not 1 <= depth <= NUM_STAGES:
            raise ValueError(f"depth must be in 1..{NUM_STAGES}, got {depth}")
        self.spec = spec
        self.depth = depth
        self.stages = nn.ModuleList()
        self.exits = nn.ModuleList()
        c_in, size = spec.in_channels, min(spec.image_height, spec.image_width)
        for c_out in spec.channels[:depth]:
            pool = size >= 2
            self.stages.append(_stage(c_in, c_out, pool))
            self.exits.append(_exit_head(spec.exit_head, c_out, spec.num_classes))
            c_in, size = c_out, (size + 1) // 2 if pool else size

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage, shallowest first."""
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits of every exit, shallowest first."""
        return [head(f) for head, f in zip(self.exits, self.features(x))]

    def submodel(self, depth: int) -> EarlyExitCNN:
        """A depth-truncated copy holding stages and exits 1..depth with these weights."""
        sub = EarlyExitCNN(self.spec, depth)
        sub.load_state_dict({k: v for k, v in self.state_dict().items() if k in sub.state_dict()})
        return sub
