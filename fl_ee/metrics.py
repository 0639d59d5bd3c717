"""Pure summaries of per-client results (no I/O)."""

from __future__ import annotations

from collections.abc import Sequence


def mean_or_none(values: Sequence[float]) -> float | None:
    """The arithmetic mean, or ``None`` for no values."""
    return sum(values) / len(values) if values else None


def group_means(values: Sequence[float], groups: Sequence[str], order: Sequence[str]) -> dict[str, float | None]:
    """Mean of ``values`` per group, for every group in ``order`` (``None`` where empty)."""
    return {g: mean_or_none([v for v, h in zip(values, groups) if h == g]) for g in order}


def exit_means(per_client: Sequence[Sequence[float]], num_exits: int) -> dict[str, float | None]:
    """Mean accuracy at exit 1..num_exits over the clients holding that exit (ragged input)."""
    return {str(i + 1): mean_or_none([acc[i] for acc in per_client if len(acc) > i]) for i in range(num_exits)}
