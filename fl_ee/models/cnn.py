"""A small CNN backbone: 4 blocks (conv, norm, ReLU, max-pool) of widths w, 2w, 4w, 4w, any input size."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from fl_ee.models.norm import norm_layer
from fl_ee.models.spec import Block, ModelSpec


def cnn_blocks(spec: ModelSpec) -> Iterator[Block]:
    """The blocks, built one at a time; each halves the spatial size while it is at least 2."""
    w, norm = spec.width, norm_layer(spec.norm)
    c_in, size = spec.in_channels, min(spec.image_height, spec.image_width)
    for c_out in (w, 2 * w, 4 * w, 4 * w):
        pool = size >= 2
        block: Block = [(None, nn.Conv2d(c_in, c_out, 3, padding=1)), (None, norm(c_out)),
                        (None, nn.ReLU(inplace=True))]
        if pool:
            block.append((None, nn.MaxPool2d(2, ceil_mode=True)))
        yield block
        c_in, size = c_out, (size + 1) // 2 if pool else size
