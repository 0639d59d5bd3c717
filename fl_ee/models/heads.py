"""Exit heads: the classifier after a stage (``linear``, ``mlp`` or ``conv``)."""

from __future__ import annotations

from torch import nn

from fl_ee.models.norm import norm_layer

MLP_HIDDEN = 128


def exit_head(kind: str, channels: int, num_classes: int, norm: str = "group", hidden: int = MLP_HIDDEN
              ) -> nn.Sequential:
    """A classifier over a stage's ``channels``-channel feature map (``hidden`` units in the ``mlp``'s hidden layer)."""
    if kind == "linear":  # global average pooling + linear classifier
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
    if kind == "mlp":  # 2x2 pooled features + a two-layer MLP
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
    if kind == "conv":  # SDN/MSDNet style: a strided 3x3 convolution, then pooling and a linear classifier
        return nn.Sequential(
            nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=norm == "none"),
            norm_layer(norm)(channels),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )
    raise ValueError(f"unknown exit head {kind!r}")
