"""Early-exit networks of any backbone and exit placement, their per-block cost, and state slicing by depth."""

from fl_ee.models.flops import Flops, block_flops, exit_table, measure_flops, parameter_count, training_flops
from fl_ee.models.network import EarlyExitNet, build_model
from fl_ee.models.placement import model_spec
from fl_ee.models.spec import ModelSpec
from fl_ee.models.state import block_index, slice_state, state_bytes
from fl_ee.models.weights import load_weights

__all__ = [
    "EarlyExitNet",
    "Flops",
    "ModelSpec",
    "block_flops",
    "block_index",
    "build_model",
    "exit_table",
    "load_weights",
    "measure_flops",
    "model_spec",
    "parameter_count",
    "slice_state",
    "state_bytes",
    "training_flops",
]
