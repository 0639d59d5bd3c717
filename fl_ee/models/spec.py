"""The shape of a network: everything needed to build the same one on the server and every client."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fl_ee.core.layout import default_exits

SMALL_INPUT = 32  # images up to this size get the CIFAR stem (3x3 convolution, stride 1, no max-pool)

Block = list[tuple[str | None, nn.Module]]
"""One backbone block: its modules in order, each with its name in torchvision's own network (or ``None``)."""


@dataclass(frozen=True)
class ModelSpec:
    """A backbone of blocks with an exit after each block number in ``exits`` (1-based).

    ``exits`` empty means the backbone's default placement (:func:`fl_ee.core.layout.default_exits`).
    ``scaler``: a width-scaled submodel divides every backbone convolution's output by its
    width ratio in training (HeteroFL's scaler, :mod:`fl_ee.models.width`).
    """

    in_channels: int
    image_height: int
    image_width: int
    num_classes: int
    width: int = 16
    exit_head: str = "mlp"
    backbone: str = "cnn"
    norm: str = "group"
    layers: tuple[int, ...] = (2, 2, 2, 2)
    exits: tuple[int, ...] = ()
    scaler: bool = False

    def __post_init__(self) -> None:
        """Fill in the default exits."""
        if not self.exits:
            object.__setattr__(self, "exits", default_exits(self.backbone, self.layers))

    @property
    def num_exits(self) -> int:
        """Exits of the full network, so its deepest depth."""
        return len(self.exits)

    @property
    def small_input(self) -> bool:
        """Whether the images are small enough for the CIFAR stem."""
        return min(self.image_height, self.image_width) <= SMALL_INPUT
