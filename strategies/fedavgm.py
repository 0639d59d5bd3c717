"""FedAvgM: a server learning rate and momentum on each shared tensor's pseudo-gradient, holder-aware.

Hsu et al., NeurIPS 2019 Workshop on Federated Learning, "Measuring the Effects of
Non-Identical Data Distribution for Federated Visual Classification" (arXiv:1909.06335);
conventions of Flower's ``flwr.serverapp.strategy.FedAvgM`` (whose default momentum is 0;
here 0.9, so that the name alone gives momentum). For a tensor with holders, with holders'
average ``a`` (as ``depthfl``) and current value ``w``::

    v <- server_momentum * v + (a - w)      (v = a - w at the tensor's first update)
    w <- w + server_learning_rate * v

``v`` is kept per tensor and advances only in rounds in which the tensor has holders; it
is the strategy's :meth:`~FedAvgM.state_dict` (``v/<key>``). Without momentum nothing is
kept, and ``server_learning_rate = 1`` is ``depthfl`` up to float rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from strategies.base import check_option, is_number
from strategies.depthfl import DepthFL


class FedAvgM(DepthFL):
    """FedAvgM: server learning rate and momentum on the holders' average (server_learning_rate, server_momentum)."""

    partial_tensors = False  # its state is per whole tensor: no width-scaled tiers

    def __init__(self, *, server_learning_rate: float = 1.0, server_momentum: float = 0.9, **kwargs) -> None:
        super().__init__(**kwargs)
        check_option(is_number(server_learning_rate) and server_learning_rate > 0, "server_learning_rate",
                     f"must be a number > 0, got {server_learning_rate!r}")
        check_option(is_number(server_momentum) and 0 <= server_momentum < 1, "server_momentum",
                     f"must be a number in [0, 1), got {server_momentum!r}")
        self.server_learning_rate, self.server_momentum = float(server_learning_rate), float(server_momentum)
        self.v: dict[str, np.ndarray] = {}

    def aggregate_tensor(
        self, key: str, values: Sequence[np.ndarray], weights: Sequence[float], current: np.ndarray
    ) -> np.ndarray:
        """The new value of one shared tensor from its holders (see the module docstring)."""
        w = np.asarray(current, np.float64)
        v = np.asarray(super().aggregate_tensor(key, values, weights, current), np.float64) - w
        if self.server_momentum > 0:
            if key in self.v:
                v = self.server_momentum * self.v[key] + v
            self.v[key] = v
        return (w + self.server_learning_rate * v).astype(current.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The momentum ``v`` of every tensor updated so far, as ``v/<key>`` arrays."""
        return {f"v/{k}": v for k, v in self.v.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the momenta of :meth:`state_dict`."""
        bad = [name for name in state if not name.startswith("v/")]
        if bad:
            raise ValueError(f"{type(self).__name__}: unexpected state entries {bad}")
        self.v = {name.removeprefix("v/"): np.asarray(v, np.float64) for name, v in state.items()}
