"""Independent, reproducible seeds for every (purpose, round, client) from the run seed."""

import numpy as np


def derive_seed(seed: int, *parts: int) -> int:
    """A 32-bit seed determined by ``seed`` and ``parts`` alone (order matters)."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def rng(seed: int, *parts: int) -> np.random.Generator:
    """A NumPy generator seeded by :func:`derive_seed`."""
    return np.random.default_rng(derive_seed(seed, *parts))
