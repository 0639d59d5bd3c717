"""Device tiers: which clients belong to which tier."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fl_ee.core.seeding import Stream, rng


def tier_counts(shares: Sequence[float], num_clients: int) -> list[int]:
    """Clients per tier: ``share * num_clients`` rounded by largest remainder (sums to n)."""
    exact = np.asarray(shares, dtype=float) * num_clients
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")  # ties go to the earlier tier
    counts[order[: num_clients - counts.sum()]] += 1
    return counts.tolist()


def assign_tiers(shares: Sequence[float], num_clients: int, seed: int) -> np.ndarray:
    """The tier index of every client id, shuffled by ``seed``; counts follow :func:`tier_counts`."""
    labels = np.repeat(np.arange(len(shares)), tier_counts(shares, num_clients))
    return rng(seed, Stream.TIERS).permutation(labels)
