"""Early-exit backbones, their per-block cost, and state-dict slicing by depth."""

from fl_ee.models.cnn import NUM_STAGES, EarlyExitCNN, ModelSpec
from fl_ee.models.flops import Flops, measure_flops
from fl_ee.models.state import block_index, slice_state, state_bytes

__all__ = [
    "NUM_STAGES",
    "EarlyExitCNN",
    "Flops",
    "ModelSpec",
    "block_index",
    "measure_flops",
    "slice_state",
    "state_bytes",
]
