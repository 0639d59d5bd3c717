"""Width-scaled submodels: HeteroFL's static slicing of every layer's channels.

A submodel of width ratio ``r`` (0 < r <= 1) keeps the first :func:`scaled` ``(c, r) =
ceil(r x c)`` channels of every layer: the output channels of every convolution and the
input channels of the layer after it, every normalisation layer's channels, and the hidden
units of the ``mlp`` exit head. The first convolution's input channels (the image's) and
every exit's classes stay whole. Each of its tensors is then the leading corner of the full
network's tensor of the same name (``weight[:ceil(r c_out), :ceil(r c_in)]``), so the server
cuts a submodel out of the global state by shapes alone
(:func:`fl_ee.models.state.narrow_state`, shapes from :func:`fl_ee.models.network.submodel_shapes`).

* **GroupNorm** keeps ``gcd(4, c)`` groups over a ``c``-channel slice (:mod:`fl_ee.models.norm`):
  the group count always divides the channels, whatever the width (a 5-channel slice has
  one group, a 6-channel slice two). As in HeteroFL, which keeps 4 groups at every width,
  the channels a group spans differ between widths; the affine weight and bias are sliced
  like any per-channel tensor.
* **BatchNorm** slices its affine parameters and, where kept, its running statistics.
* **Depthwise convolutions** (MobileNetV2) keep one group per channel.
* **Scaler** (``ModelSpec.scaler``, HeteroFL's): every backbone convolution of a width-``r``
  submodel divides its output by ``r`` in training, so its activations keep the full
  network's scale; in evaluation it passes them on unchanged. The exit heads are not
  scaled (HeteroFL scales the backbone, not its classifier).

A width-``r`` network is built by building each backbone block of the full network on the
``meta`` device (shapes only) and replacing every convolution and normalisation layer by
its narrowed copy (:func:`narrow_blocks`), so one rule serves every backbone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from fl_ee.models.norm import norm_layer
from fl_ee.models.spec import Block

ROUNDING = 1e-9  # ratio x channels this close above an integer counts as that integer (0.3 x 10 is 3, not 4)


def scaled(channels: int, ratio: float) -> int:
    """``ceil(ratio x channels)``, at least 1: the channels a width-``ratio`` submodel keeps of ``channels``."""
    return max(1, math.ceil(ratio * channels - ROUNDING))


class ScaledConv2d(nn.Conv2d):
    """A convolution whose output is divided by ``rate`` in training (HeteroFL's scaler); state keys are Conv2d's."""

    rate: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x``; in training, divide by ``rate``."""
        y = super().forward(x)
        return y / self.rate if self.training else y


class _Narrower:
    """Replaces convolutions and normalisation layers by copies over ``scaled(c, ratio)`` channels.

    The first convolution met keeps its input channels (the image's).
    """

    def __init__(self, ratio: float, norm: Callable[[int], nn.Module], scaler: bool) -> None:
        self.ratio, self.norm, self.scaler = ratio, norm, scaler
        self.first = True

    def __call__(self, module: nn.Module) -> nn.Module:
        if isinstance(module, nn.Conv2d):
            return self._conv(module)
        if isinstance(module, nn.BatchNorm2d):
            return self.norm(scaled(module.num_features, self.ratio))
        if isinstance(module, nn.GroupNorm):
            return self.norm(scaled(module.num_channels, self.ratio))
        for name, child in module.named_children():
            setattr(module, name, self(child))
        return module

    def _conv(self, conv: nn.Conv2d) -> nn.Conv2d:
        c_in = conv.in_channels if self.first else scaled(conv.in_channels, self.ratio)
        self.first = False
        depthwise = conv.groups > 1
        if depthwise and not conv.groups == conv.in_channels == conv.out_channels:
            raise ValueError(f"cannot narrow a convolution of {conv.groups} groups over {conv.in_channels} channels")
        narrow = (ScaledConv2d if self.scaler else nn.Conv2d)(
            c_in, scaled(conv.out_channels, self.ratio), conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
            conv.dilation, c_in if depthwise else 1, conv.bias is not None, conv.padding_mode)  # type: ignore[arg-type]
        if isinstance(narrow, ScaledConv2d):
            narrow.rate = self.ratio
        return narrow


def narrow_blocks(blocks: Iterator[Block], ratio: float, norm: str, scaler: bool = False) -> Iterator[Block]:
    """The backbone's ``blocks`` at width ``ratio``: each built on the meta device, then narrowed.

    ``norm`` names the normalisation layers (:func:`fl_ee.models.norm.norm_layer`); ``scaler``
    makes every convolution a :class:`ScaledConv2d`. Raises ``TypeError`` where a layer that
    holds tensors cannot be narrowed.
    """
    narrower = _Narrower(ratio, norm_layer(norm), scaler)
    device = torch.empty(()).device  # where the caller builds: the narrowed layers' device, meta or not
    while True:
        with torch.device("meta"):
            block = next(blocks, None)
        if block is None:
            return
        narrowed: Block = [(name, narrower(module)) for name, module in block]
        for _, module in narrowed:
            if any(t.device != device for t in (*module.parameters(), *module.buffers())):
                raise TypeError(f"{type(module).__name__} holds a layer fl-ee cannot narrow to width {ratio:g}")
        yield narrowed
