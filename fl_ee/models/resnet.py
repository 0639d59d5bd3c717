"""ResNet-18/34-style backbones of torchvision's ``BasicBlock``, one block per residual block."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from fl_ee.models.norm import norm_layer
from fl_ee.models.spec import Block, ModelSpec


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: its modules, names, order of initial draws and forward pass.

    Written here because importing torchvision loads ``torch._dynamo`` (1-2 s), which a
    process that builds a ResNet (``fl-ee check``, each Ray worker) needs for nothing else;
    tests/test_backbones.py holds it equal to torchvision's.
    """

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
                 norm_layer: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv-norm-relu-conv-norm, plus the input (downsampled where the shape changes), then relu."""
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


def resnet_blocks(spec: ModelSpec) -> Iterator[Block]:
    """Residual blocks in groups of ``spec.layers`` (widths w, 2w, 4w, ...); the stem joins the first.

    The stem is CIFAR's (3x3 convolution, stride 1) for small inputs, ImageNet's (7x7,
    stride 2, max-pool) otherwise. Modules carry torchvision's ``resnet`` names.
    """
    w, norm = spec.width, norm_layer(spec.norm)
    conv = (nn.Conv2d(spec.in_channels, w, 3, 1, 1, bias=False) if spec.small_input
            else nn.Conv2d(spec.in_channels, w, 7, 2, 3, bias=False))
    stem: Block = [("conv1", conv), ("bn1", norm(w)), (None, nn.ReLU(inplace=True))]
    if not spec.small_input:
        stem.append((None, nn.MaxPool2d(3, 2, 1)))
    inplanes = w
    for group, count in enumerate(spec.layers):
        planes = w * 2**group
        for k in range(count):
            stride = 2 if group > 0 and k == 0 else 1
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), norm(planes))
            block = BasicBlock(inplanes, planes, stride, downsample, norm_layer=norm)
            yield [*stem, (f"layer{group + 1}.{k}", block)]
            stem, inplanes = [], planes
