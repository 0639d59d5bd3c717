"""Holder-aware aggregation: each shared tensor, or each part of it, is combined over the clients that hold it.

A depth-sliced client holds whole tensors; a width-sliced one holds the leading corner of
each (:mod:`fl_ee.models.width`). Where a tensor's holders sent corners of different sizes,
every element is combined over the holders of that element: the elements of the smallest
corner over all of them, the elements the next corner adds over the holders of that corner
or a larger one, and so on (HeteroFL's, FjORD's and ScaleFL's nested aggregation); elements
outside every corner keep their value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from fl_ee.models.state import corner

W = TypeVar("W")  # what a client's update is weighted by: usually its example count
# (key, holders' values, holders' weights, current global value) -> new global value
TensorRule = Callable[[str, Sequence[np.ndarray], Sequence[W], np.ndarray], np.ndarray]


def weighted_mean(values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_i w_i v_i / sum_i w_i, computed in float64 and returned in the values' dtype.

    All-zero weights fall back to the plain mean. The values are written into one float64
    array (a third of the time of converting each and stacking the copies).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones_like(w)
    first = np.asarray(values[0])
    stacked = np.empty((len(values), *first.shape), dtype=np.float64)
    for i, value in enumerate(values):
        if np.shape(value) != first.shape:
            raise ValueError(f"all values must have one shape: {first.shape} and {np.shape(value)}")
        stacked[i] = value
    mean = np.tensordot(w / w.sum(), stacked, axes=1)
    return mean.astype(first.dtype, copy=False)


def fednova_rescale(
    updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float], steps: Sequence[int],
    current: Mapping[str, np.ndarray],
) -> list[dict[str, np.ndarray]]:
    """FedNova's normalisation (Wang et al., NeurIPS 2020) as updates the usual weighted mean then averages.

    Client i's change ``u_i - current`` is divided by its local steps ``tau_i`` and multiplied
    by ``tau_eff = sum_i p_i tau_i`` (``p_i``: ``weights`` normalised), so that the weighted
    mean of the returned updates is ``current + tau_eff x sum_i p_i (u_i - current) / tau_i``.
    A width-sliced update's change is taken from the corner of ``current`` it holds; integer
    tensors (counters) are left as sent.
    """
    p = np.asarray(weights, dtype=np.float64)
    tau_eff = float(p @ np.asarray(steps, dtype=np.float64) / p.sum())
    return rebased(updates, [current] * len(updates), [tau_eff / tau for tau in steps], current)


def rebased(
    updates: Sequence[Mapping[str, np.ndarray]], starts: Sequence[Mapping[str, np.ndarray]],
    scales: Sequence[float], current: Mapping[str, np.ndarray],
) -> list[dict[str, np.ndarray]]:
    """Each client's change, scaled, moved onto ``current``: ``current + scales[i] (u_i - starts[i])``.

    ``starts[i]`` is the global state client i trained from. A width-sliced update's
    change is taken from the corners it holds; integer tensors (counters) are left as sent.
    """
    out = []
    for update, start, scale in zip(updates, starts, scales, strict=True):
        moved = {}
        for key, value in update.items():
            if np.issubdtype(value.dtype, np.floating):
                at = corner(value.shape)
                base = np.asarray(current[key][at], dtype=np.float64)
                origin = base if start is current else np.asarray(start[key][at], dtype=np.float64)
                value = (base + (value.astype(np.float64) - origin) * scale).astype(value.dtype)
            moved[key] = value
        out.append(moved)
    return out


def buffered_update(
    updates: Sequence[Mapping[str, np.ndarray]], starts: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[W], scales: Sequence[float], current: Mapping[str, np.ndarray], rule: TensorRule,
) -> dict[str, np.ndarray]:
    """FedBuff's server step (Nguyen et al., AISTATS 2022), holder-aware: ``rule`` over each tensor's buffered holders.

    Client i trained from ``starts[i]`` (the version it started at) and sent ``updates[i]``;
    its change ``u_i - start_i`` enters scaled by ``scales[i]`` (its staleness weight times
    the server learning rate), moved onto ``current`` (:func:`rebased`). With the
    weighted mean as ``rule`` a tensor becomes ``current + sum_i p_i s_i (u_i - start_i)``
    over the buffered clients that hold it (``p_i``: their ``weights`` normalised); a
    server optimiser's rule sees that mean change as its pseudo-gradient. With one
    buffered update and a fresh start this is FedAsync's ``(1 - s) current + s u``.
    """
    return holder_aggregate(rebased(updates, starts, scales, current), weights, current, rule)


def holder_aggregate(
    updates: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[W],
    current: Mapping[str, np.ndarray],
    rule: TensorRule,
) -> dict[str, np.ndarray]:
    """The new global state: ``rule`` over the holders of each key; a key no one sent keeps its value.

    ``updates[i]`` holds only the keys client i trained (its depth's slice), weighted by
    ``weights[i]`` (an example count, or whatever per-client value ``rule`` needs).
    Updates are combined in the order given. A key whose holders sent leading corners of
    it (width-sliced clients) goes to ``rule`` once per region of elements with the same
    holders, as flat arrays (:func:`region_aggregate`).
    """
    unknown = {k for u in updates for k in u} - set(current)
    if unknown:
        raise KeyError(f"updates hold keys the global state lacks: {sorted(unknown)[:3]}")
    new: dict[str, np.ndarray] = {}
    for key, value in current.items():
        holders = [(u[key], w) for u, w in zip(updates, weights) if key in u]
        if not holders:
            new[key] = value
        elif all(np.shape(v) == np.shape(value) for v, _ in holders):
            values, holder_weights = zip(*holders)
            new[key] = rule(key, list(values), list(holder_weights), value)
        else:
            new[key] = region_aggregate(key, holders, value, rule)
    return new


def _corner_mask(shape: tuple[int, ...], full: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(full, dtype=bool)
    mask[corner(shape)] = True
    return mask


def region_aggregate(
    key: str, holders: Sequence[tuple[np.ndarray, W]], current: np.ndarray, rule: TensorRule
) -> np.ndarray:
    """One tensor from holders that sent leading corners of it: ``rule`` over each region's holders.

    The corners must nest (each within the next larger one and within ``current``); the
    region of a corner is its elements outside every smaller corner, and its holders are
    the clients whose corner contains it. ``rule`` gets each region's elements as flat
    arrays (holders' values, their weights, the current values) and returns the new ones;
    elements outside every corner keep their value. Raises ``ValueError`` for corners that
    do not nest.
    """
    full = np.shape(current)
    shapes = sorted({np.shape(v) for v, _ in holders}, key=lambda s: int(np.prod(s)))
    for small, large in zip(shapes, [*shapes[1:], full]):
        if len(small) != len(full) or any(a > b for a, b in zip(small, large)):
            raise ValueError(f"{key}: holders' shapes {shapes} are not nested corners of {list(full)}")
    new, inner = np.array(current, copy=True), np.zeros(full, dtype=bool)
    for shape in shapes:
        outer = _corner_mask(shape, full)
        region = outer & ~inner
        members = [(v, w) for v, w in holders if all(a >= b for a, b in zip(np.shape(v), shape))]
        values = []
        for v, _ in members:
            padded = np.zeros(full, dtype=np.asarray(v).dtype)
            padded[corner(np.shape(v))] = v
            values.append(padded[region])
        new[region] = rule(key, values, [w for _, w in members], current[region])
        inner = outer
    return new
