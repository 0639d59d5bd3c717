"""Seed streams: independent, reproducible randomness for every (purpose, round, client) from the run seed.

Every random draw in fl-ee names its purpose by a :class:`Stream`; the draw's seed is
derived from the run seed, the stream and any further parts (round, client id), so no
two purposes, rounds or clients share a generator, whatever the run seed.
"""

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """The purposes of randomness in a run; each value is used by exactly one of them."""

    TIERS = 1  # which clients belong to which tier
    SAMPLE_TRAIN = 2  # clients sampled for training, per round
    SAMPLE_EVALUATE = 3  # clients sampled for evaluation, per round
    INIT = 4  # the global model's initial weights
    PRESENCE = 5  # availability and dropout, per round and client
    SPEED = 6  # per-client compute-speed factors within a tier
    PARTITION = 7  # which samples each client holds
    LOCAL_SPLIT = 8  # each client's local train/test split, per client
    LOCAL_TRAINING = 10  # batch order of local training, per round and client
    CALIBRATION = 11  # which local train samples each client holds out for calibration, per client
    LABELS = 12  # which local training samples keep their labels (labelled_fraction), per client
    FINETUNE = 13  # batch order of fine-tuning before an evaluation (mode finetune), per round and client
    UNSEEN = 14  # which clients are held out of training (data.unseen_fraction)
    SAMPLE_UNSEEN = 15  # unseen clients sampled for evaluation, per round
    WIDTHS = 16  # the width each local step trains under FjORD's ordered dropout, per round and client


def derive_seed(seed: int, stream: Stream, *parts: int) -> int:
    """A 32-bit seed determined by the run ``seed``, the ``stream`` and ``parts`` alone (order matters)."""
    return int(np.random.SeedSequence([seed, int(stream), *parts]).generate_state(1)[0])


def rng(seed: int, stream: Stream, *parts: int) -> np.random.Generator:
    """A NumPy generator seeded by :func:`derive_seed`."""
    return np.random.default_rng(derive_seed(seed, stream, *parts))
