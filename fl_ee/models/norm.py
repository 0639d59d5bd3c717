"""Normalisation layers by name: ``group`` (default), ``batch``, ``static-batch`` or ``none``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 4  # GroupNorm groups: gcd(4, channels), so any channel count (a width-scaled layer's too) is valid


class BatchNorm(nn.BatchNorm2d):
    """``BatchNorm2d`` that normalises a batch of one value per channel by its running statistics.

    Training cannot estimate a variance from one value (a last batch of one sample at a
    1x1 feature map); such a batch is normalised as in evaluation and leaves the running
    statistics unchanged. State keys are ``BatchNorm2d``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (N, C, H, W)."""
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class StaticBatchNorm(nn.BatchNorm2d):
    """HeteroFL's static batch norm: every batch normalised by its own statistics, in training and in evaluation.

    No running statistics are kept (``track_running_stats=False``), so the state holds only
    the affine weight and bias. A batch of one value per channel normalises to 0: the output
    is the bias.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (N, C, H, W) by its own mean and variance per channel."""
        if x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return x * 0 + self.bias.view(1, -1, 1, 1)
        return super().forward(x)


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """A factory of ``kind`` normalisation layers over a given number of channels."""
    if kind == "group":
        return lambda channels: nn.GroupNorm(math.gcd(GROUPS, channels), channels)
    if kind == "batch":
        return BatchNorm
    if kind == "static-batch":
        return StaticBatchNorm
    if kind == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")
