"""Holder-aware aggregation: each shared tensor is combined over the clients that hold it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

W = TypeVar("W")  # what a client's update is weighted by: usually its example count
# (key, holders' values, holders' weights, current global value) -> new global value
TensorRule = Callable[[str, Sequence[np.ndarray], Sequence[W], np.ndarray], np.ndarray]


def weighted_mean(values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_i w_i v_i / sum_i w_i, computed in float64 and returned in the values' dtype.

    All-zero weights fall back to the plain mean.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones_like(w)
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in values])
    mean = np.tensordot(w / w.sum(), stacked, axes=1)
    return mean.astype(np.asarray(values[0]).dtype, copy=False)


def holder_aggregate(
    updates: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[W],
    current: Mapping[str, np.ndarray],
    rule: TensorRule,
) -> dict[str, np.ndarray]:
    """The new global state: ``rule`` over the holders of each key; a key no one sent keeps its value.

    ``updates[i]`` holds only the keys client i trained (its depth's slice), weighted by
    ``weights[i]`` (an example count, or whatever per-client value ``rule`` needs).
    Updates are combined in the order given.
    """
    unknown = {k for u in updates for k in u} - set(current)
    if unknown:
        raise KeyError(f"updates hold keys the global state lacks: {sorted(unknown)[:3]}")
    new: dict[str, np.ndarray] = {}
    for key, value in current.items():
        holders = [(u[key], w) for u, w in zip(updates, weights) if key in u]
        if holders:
            values, holder_weights = zip(*holders)
            new[key] = rule(key, list(values), list(holder_weights), value)
        else:
            new[key] = value
    return new
