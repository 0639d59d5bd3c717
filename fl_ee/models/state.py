"""State-dict naming: ``stages.{i}.*`` and ``exits.{i}.*`` (0-based) carry the structure.

A depth-d submodel's state is exactly the keys whose index is below d, so the server
slices and aggregates by name, without model code. A width-scaled submodel's tensors are
the leading corners of the full ones (:mod:`fl_ee.models.width`): :func:`narrow_state` cuts
them by shape.
"""

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def block_index(key: str) -> int:
    """The stage/exit index a state key belongs to (``stages.2.0.weight`` -> 2)."""
    kind, index, _ = key.split(".", 2)
    if kind not in ("stages", "exits"):
        raise ValueError(f"not a stage or exit key: {key!r}")
    return int(index)


def slice_state(state: Mapping[str, T], depth: int) -> dict[str, T]:
    """The entries a depth-``depth`` submodel holds: stages and exits 0..depth-1."""
    return {k: v for k, v in state.items() if block_index(k) < depth}


def corner(shape: Sequence[int]) -> tuple[slice, ...]:
    """The index of a tensor's leading corner of ``shape``: its first ``shape[i]`` entries along each axis."""
    return tuple(slice(0, n) for n in shape)


def narrow_state(state: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """The leading corner of ``shapes[key]`` of each tensor ``shapes`` names (views; 0-d tensors as they are)."""
    return {key: state[key][corner(shape)] if len(shape) else state[key] for key, shape in shapes.items()}


def state_bytes(state: Mapping[str, Any]) -> int:
    """Bytes of a state's tensors or arrays (what a message carries, before framing)."""
    return sum(v.numel() * v.element_size() if hasattr(v, "element_size") else v.nbytes for v in state.values())
