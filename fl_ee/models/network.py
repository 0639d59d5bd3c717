"""The early-exit network: a backbone's blocks grouped into stages, one exit head after each stage."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from fl_ee.models.cnn import cnn_blocks
from fl_ee.models.heads import exit_head
from fl_ee.models.mobilenet import mobilenet_v2_blocks
from fl_ee.models.resnet import resnet_blocks
from fl_ee.models.spec import Block, ModelSpec

BACKBONES: dict[str, Callable[[ModelSpec], Iterator[Block]]] = {
    "cnn": cnn_blocks,
    "resnet": resnet_blocks,
    "mobilenet_v2": mobilenet_v2_blocks,
}


def backbone_blocks(spec: ModelSpec) -> Iterator[Block]:
    """The backbone's blocks in order, built one at a time."""
    return BACKBONES[spec.backbone](spec)


def out_channels(module: nn.Module) -> int:
    """The channels a stage puts out: those of its last convolution."""
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


class EarlyExitNet(nn.Module):
    """Stages 1..depth of the backbone, each followed by its exit head.

    Stage i holds the blocks after exit i-1 up to exit i (``spec.exits``), so state keys
    are ``stages.{i}.*`` and ``exits.{i}.*`` whatever the backbone. ``forward`` returns
    the logits of every exit, shallowest first. ``torchvision_names`` maps the name of
    each module in torchvision's own network to its name here (for ``model.weights``).
    """

    def __init__(self, spec: ModelSpec, depth: int | None = None) -> None:
        super().__init__()
        depth = spec.num_exits if depth is None else depth
        if not 1 <= depth <= spec.num_exits:
            raise ValueError(f"depth must be in 1..{spec.num_exits}, got {depth}")
        self.spec = spec
        self.depth = depth
        self.stages = nn.ModuleList()
        self.exits = nn.ModuleList()
        self.torchvision_names: dict[str, str] = {}
        blocks, start = backbone_blocks(spec), 0
        for i, end in enumerate(spec.exits[:depth]):
            stage = nn.Sequential()
            for _ in range(end - start):
                for name, module in next(blocks):
                    if name is not None:
                        self.torchvision_names[name] = f"stages.{i}.{len(stage)}"
                    stage.append(module)
            self.stages.append(stage)
            self.exits.append(exit_head(spec.exit_head, out_channels(stage), spec.num_classes, spec.norm))
            start = end

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

    def submodel(self, depth: int) -> EarlyExitNet:
        """A depth-truncated copy holding stages and exits 1..depth with these weights."""
        sub = build_model(self.spec, depth)
        sub.load_state_dict({k: v for k, v in self.state_dict().items() if k in sub.state_dict()})
        return sub


def build_model(spec: ModelSpec, depth: int | None = None) -> EarlyExitNet:
    """The network of ``spec`` holding exits 1..depth (default: all of them)."""
    return EarlyExitNet(spec, depth)
