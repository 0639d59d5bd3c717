"""Where a backbone's exits sit: its block count, default exits and FLOPs-even placement.

A backbone is a sequence of blocks numbered 1..B; an exit sits after a block, and stage
i is the blocks between exit i-1 and exit i. Plain Python (no torch), so the config is
validated without importing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

CNN_BLOCKS = 4
# torchvision's MobileNetV2 features: the stem joined to the first inverted residual, then
# 16 more inverted residuals and the final 1x1 convolution.
MOBILENET_V2_BLOCKS = 18
MOBILENET_V2_EXITS = (3, 6, 13, 18)  # after the 24-, 32- and 96-channel groups, and the last block


def block_count(backbone: str, layers: Sequence[int]) -> int:
    """The number of blocks of a backbone (``layers``: ResNet blocks per group)."""
    if backbone == "resnet":
        return sum(layers)
    return MOBILENET_V2_BLOCKS if backbone == "mobilenet_v2" else CNN_BLOCKS


def default_exits(backbone: str, layers: Sequence[int]) -> tuple[int, ...]:
    """The blocks after which exits sit by default: each cnn stage, each ResNet group's end."""
    if backbone == "resnet":
        return tuple(accumulate(layers))
    return MOBILENET_V2_EXITS if backbone == "mobilenet_v2" else tuple(range(1, CNN_BLOCKS + 1))


def even_flops_exits(block_flops: Sequence[float], count: int) -> tuple[int, ...]:
    """``count`` exits placed where the cumulative FLOPs come closest to 1/count, 2/count, ... of the total.

    Returns block numbers (1-based), strictly increasing, each exit leaving room for the
    ones after it; ties go to the earlier block.
    """
    if not 1 <= count <= len(block_flops):
        raise ValueError(f"cannot place {count} exits on {len(block_flops)} blocks")
    cumulative = list(accumulate(block_flops))
    total, exits, previous = cumulative[-1], [], 0
    for j in range(1, count + 1):
        target = total * j / count
        candidates = range(previous + 1, len(block_flops) - (count - j) + 1)
        previous = min(candidates, key=lambda k: (abs(cumulative[k - 1] - target), k))
        exits.append(previous)
    return tuple(exits)
