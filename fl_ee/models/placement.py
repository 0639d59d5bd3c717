"""From the run's model config and the data's shape to a :class:`ModelSpec`, exits placed."""

from __future__ import annotations

import functools

from fl_ee.core.config import ModelConfig
from fl_ee.core.layout import even_flops_exits
from fl_ee.models.flops import block_flops
from fl_ee.models.spec import ModelSpec


def model_spec(cfg: ModelConfig, in_channels: int, height: int, width: int, num_classes: int) -> ModelSpec:
    """The network of ``cfg`` for images of this shape; ``even-flops`` measures the blocks to place the exits."""
    spec = ModelSpec(in_channels, height, width, num_classes, cfg.width, cfg.exit_head, cfg.backbone, cfg.norm,
                     tuple(cfg.layers), tuple(cfg.exits) if isinstance(cfg.exits, list) else ())
    if cfg.exits == "even-flops":
        spec = _even_flops(spec, cfg.num_exits)
    return spec


@functools.lru_cache(maxsize=8)
def _even_flops(spec: ModelSpec, count: int) -> ModelSpec:
    exits = even_flops_exits(block_flops(spec), count)
    return ModelSpec(**{**spec.__dict__, "exits": exits})
