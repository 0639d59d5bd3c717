"""The early-exit network: a backbone's blocks grouped into stages, one exit head after each stage."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call

from fl_ee.models.cnn import cnn_blocks
from fl_ee.models.heads import MLP_HIDDEN, exit_head
from fl_ee.models.mobilenet import mobilenet_v2_blocks
from fl_ee.models.resnet import resnet_blocks
from fl_ee.models.spec import Block, ModelSpec
from fl_ee.models.state import narrow_state
from fl_ee.models.width import narrow_blocks, scaled

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
    ``width`` < 1 keeps the first ``ceil(width x c)`` channels of every layer
    (:mod:`fl_ee.models.width`); its tensors have the same names as the full network's.
    """

    def __init__(self, spec: ModelSpec, depth: int | None = None, width: float = 1.0) -> None:
        super().__init__()
        depth = spec.num_exits if depth is None else depth
        if not 1 <= depth <= spec.num_exits:
            raise ValueError(f"depth must be in 1..{spec.num_exits}, got {depth}")
        if not 0 < width <= 1:
            raise ValueError(f"width must be in (0, 1], got {width}")
        self.spec = spec
        self.depth = depth
        self.width = width
        self.stages = nn.ModuleList()
        self.exits = nn.ModuleList()
        self.torchvision_names: dict[str, str] = {}
        blocks, start = backbone_blocks(spec), 0
        if width < 1:
            blocks = narrow_blocks(blocks, width, spec.norm, spec.scaler)
        for i, end in enumerate(spec.exits[:depth]):
            stage = nn.Sequential()
            for _ in range(end - start):
                for name, module in next(blocks):
                    if name is not None:
                        self.torchvision_names[name] = f"stages.{i}.{len(stage)}"
                    stage.append(module)
            self.stages.append(stage)
            self.exits.append(exit_head(spec.exit_head, out_channels(stage), spec.num_classes, spec.norm,
                                        scaled(MLP_HIDDEN, width)))
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


def build_model(spec: ModelSpec, depth: int | None = None, width: float = 1.0) -> EarlyExitNet:
    """The network of ``spec`` holding exits 1..depth (default: all of them), at width ratio ``width``."""
    return EarlyExitNet(spec, depth, width)


def _shell(spec: ModelSpec, depth: int, width: float) -> EarlyExitNet:
    """The network's modules on the meta device: shapes, no values, no random draw."""
    with torch.device("meta"):
        return EarlyExitNet(spec, depth, width)


@functools.lru_cache(maxsize=64)
def submodel_shapes(spec: ModelSpec, depth: int, width: float) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of the depth-``depth``, width-``width`` submodel, by state key."""
    return {key: tuple(value.shape) for key, value in _shell(spec, depth, width).state_dict().items()}


@functools.lru_cache(maxsize=64)
def submodel_params(spec: ModelSpec, depth: int, width: float) -> int:
    """The parameters of the depth-``depth``, width-``width`` submodel (buffers excluded)."""
    return sum(p.numel() for p in _shell(spec, depth, width).parameters())


def width_forward(model: EarlyExitNet, width: float) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The exits' logits of ``model``'s first ``ceil(width x c)`` channels of every layer (FjORD's ordered dropout).

    The narrower network runs on views of ``model``'s own tensors, so gradients reach only
    those channels and batch norm's running statistics (where kept) update in place;
    ``width`` is a ratio of the full network's channels, at most ``model.width``.
    """
    if width == model.width:
        return model
    if width > model.width:
        raise ValueError(f"width {width} is wider than the model's {model.width}")
    shell = _shell(model.spec, model.depth, width)
    shapes = submodel_shapes(model.spec, model.depth, width)

    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        shell.train(model.training)
        return functional_call(shell, narrow_state(model.state_dict(keep_vars=True), shapes), (x,))

    return forward
