"""DepthFL's aggregation: every tensor averaged over the clients whose depth holds it.

Kim et al., "DepthFL: Depthwise Federated Learning for Heterogeneous Clients", ICLR 2023
(Flower baseline ``baselines/depthfl``). The paper averages holders unweighted;
``weighted=True`` (the default) weights them by example count, as ReeFL does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strategies.aggregation import weighted_mean
from strategies.base import DepthAwareStrategy, check_option


class DepthFL(DepthAwareStrategy):
    """DepthFL: each tensor averaged over the clients holding it (weighted: by examples, or not)."""

    def __init__(self, *, weighted: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        check_option(isinstance(weighted, bool), "weighted", f"expected true or false, got {weighted!r}")
        self.weighted = weighted

    def aggregate_tensor(
        self, key: str, values: Sequence[np.ndarray], weights: Sequence[float], current: np.ndarray
    ) -> np.ndarray:
        """The new value of one shared tensor from its holders (see the module docstring)."""
        return weighted_mean(values, weights if self.weighted else [1.0] * len(values))
