"""MobileNetV2 backbones: torchvision's ``MobileNetV2(...).features``, one block per inverted residual."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from fl_ee.models.norm import norm_layer
from fl_ee.models.spec import Block, ModelSpec

STANDARD_WIDTH = 32  # the stem's channels at width_mult 1


def mobilenet_v2_blocks(spec: ModelSpec) -> Iterator[Block]:
    """``features`` of a MobileNetV2 with ``width_mult = width / 32``; the stem joins the first block.

    Small inputs get a stride-1 stem; another channel count than 3 gets its own stem
    convolution. Modules carry torchvision's ``mobilenet_v2`` names.
    """
    from torchvision.models import MobileNetV2  # ~1 s to import; the cnn needs none

    features = MobileNetV2(num_classes=spec.num_classes, width_mult=spec.width / STANDARD_WIDTH,
                           norm_layer=norm_layer(spec.norm)).features
    stem = features[0][0]
    stride = 1 if spec.small_input else 2
    if spec.in_channels != stem.in_channels:
        features[0][0] = nn.Conv2d(spec.in_channels, stem.out_channels, 3, stride, 1, bias=False)
    else:
        stem.stride = (stride, stride)
    named: Block = [(f"features.{k}", module) for k, module in enumerate(features)]
    yield named[:2]
    for item in named[2:]:
        yield [item]
