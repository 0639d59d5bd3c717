"""ResNet-18/34-style backbones from torchvision's own ``BasicBlock``, one block per residual block."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from fl_ee.models.norm import norm_layer
from fl_ee.models.spec import Block, ModelSpec


def resnet_blocks(spec: ModelSpec) -> Iterator[Block]:
    """Residual blocks in groups of ``spec.layers`` (widths w, 2w, 4w, ...); the stem joins the first.

    The stem is CIFAR's (3x3 convolution, stride 1) for small inputs, ImageNet's (7x7,
    stride 2, max-pool) otherwise. Modules carry torchvision's ``resnet`` names.
    """
    from torchvision.models.resnet import BasicBlock  # ~1 s to import; the cnn needs none

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
