"""DepthFL's aggregation: every tensor averaged over the clients whose depth holds it.

Kim et al., "DepthFL: Depthwise Federated Learning for Heterogeneous Clients", ICLR 2023
(Flower baseline ``baselines/depthfl``). The paper averages holders unweighted;
``weighted=True`` (the default) weights them by example count, as ReeFL does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strategies.aggregation import weighted_mean
from strategies.base import DepthAwareStrategy


class DepthFL(DepthAwareStrategy):
    """Per-tensor average over holders, example-weighted unless ``weighted=False``."""

    def __init__(self, *, weighted: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.weighted = weighted

    def aggregate_tensor(
        self, key: str, values: Sequence[np.ndarray], weights: Sequence[float], current: np.ndarray
    ) -> np.ndarray:
        return weighted_mean(values, weights if self.weighted else [1.0] * len(values))
