"""Normalisation layers by name: ``group`` (default), ``batch`` or ``none``."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

GROUPS = 4  # GroupNorm groups (fewer where the channels are not a multiple of 4)


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """A factory of ``kind`` normalisation layers over a given number of channels."""
    if kind == "group":
        return lambda channels: nn.GroupNorm(math.gcd(GROUPS, channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")
