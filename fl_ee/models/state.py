"""State-dict naming: ``stages.{i}.*`` and ``exits.{i}.*`` (0-based) carry the structure.

A depth-d submodel's state is exactly the keys whose index is below d, so the server
slices and aggregates by name, without model code.
"""

from collections.abc import Mapping
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


def state_bytes(state: Mapping[str, Any]) -> int:
    """Bytes of a state's tensors or arrays (what a message carries, before framing)."""
    return sum(v.numel() * v.element_size() if hasattr(v, "element_size") else v.nbytes for v in state.values())
