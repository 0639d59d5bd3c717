"""Early-exit networks of any backbone, exit placement and width, their per-block cost, and state slicing."""

from fl_ee.models.flops import (
    Flops,
    block_flops,
    exit_table,
    measure_flops,
    parameter_count,
    submodel_flops,
    training_flops,
)
from fl_ee.models.network import EarlyExitNet, build_model, submodel_params, submodel_shapes, width_forward
from fl_ee.models.placement import model_spec
from fl_ee.models.spec import ModelSpec
from fl_ee.models.state import block_index, narrow_state, slice_state, state_bytes
from fl_ee.models.weights import load_weights
from fl_ee.models.width import scaled

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
    "narrow_state",
    "parameter_count",
    "scaled",
    "slice_state",
    "state_bytes",
    "submodel_flops",
    "submodel_params",
    "submodel_shapes",
    "training_flops",
    "width_forward",
]
