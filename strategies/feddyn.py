"""FedDyn's server-side correction, as DepthFL applies it per tensor over the tensor's holders.

Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021; holder-aware
form from Kim et al., "DepthFL", ICLR 2023 (Flower baseline ``baselines/depthfl``,
``strategy.py``), which runs it with ``alpha = 0.1``. For a tensor held by ``n_k`` of
the ``M`` clients, with holders' average ``a`` and current value ``w``::

    h <- h - alpha * (n_k / M) * (a - w)
    w <- a - h / alpha

``h`` is kept per tensor on the server (checkpointed as ``h/<key>`` by
:meth:`~FedDyn.state_dict`); ``a`` is example-weighted unless ``weighted=false``
(DepthFL's unweighted average). The client half comes with it: under this strategy (or a
subclass) every client adds ``-<g_prev, w> + (alpha/2)||w - w_received||^2`` to its
shared step's loss and keeps ``g_prev`` as its own state (:mod:`fl_ee.learning.feddyn`),
with the ``alpha`` of :func:`client_alpha`. ``training.prox_mu`` would add a second
quadratic term on top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fl_ee.core.config import Config
from strategies.base import check_option, is_number
from strategies.depthfl import DepthFL
from strategies.registry import build_strategy, strategy_class


def feddyn_correction(
    average: np.ndarray, current: np.ndarray, h: np.ndarray, alpha: float, holders: int, num_clients: int
) -> tuple[np.ndarray, np.ndarray]:
    """The corrected new value and the new ``h`` (float64) of one tensor."""
    average, current = np.asarray(average, np.float64), np.asarray(current, np.float64)
    h = h - alpha * holders / num_clients * (average - current)
    return average - h / alpha, h


class FedDyn(DepthFL):
    """FedDyn: dynamic regularisation (alpha), the correction on the holders' average and each client's term."""

    partial_tensors = False  # its state is per whole tensor: no width-scaled tiers

    def __init__(self, *, alpha: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        check_option(is_number(alpha) and alpha > 0, "alpha", f"must be a number > 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.h: dict[str, np.ndarray] = {}

    def aggregate_tensor(
        self, key: str, values: Sequence[np.ndarray], weights: Sequence[float], current: np.ndarray
    ) -> np.ndarray:
        """The new value of one shared tensor from its holders (see the module docstring)."""
        average = super().aggregate_tensor(key, values, weights, current)
        h = self.h.get(key, np.zeros(current.shape))
        new, self.h[key] = feddyn_correction(average, current, h, self.alpha, len(values), len(self.clients))
        return new.astype(current.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The correction ``h`` of every tensor updated so far, as ``h/<key>`` arrays."""
        return {f"h/{k}": h for k, h in self.h.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the corrections of :meth:`state_dict`."""
        bad = [name for name in state if not name.startswith("h/")]
        if bad:
            raise ValueError(f"{type(self).__name__}: unexpected state entries {bad}")
        self.h = {name.removeprefix("h/"): np.asarray(h, np.float64) for name, h in state.items()}


def client_alpha(cfg: Config) -> float:
    """FedDyn's ``alpha`` for the run's clients: the strategy's, when it is :class:`FedDyn` or a subclass; else 0."""
    strategy = build_strategy(cfg) if issubclass(strategy_class(cfg.strategy.name), FedDyn) else None
    return strategy.alpha if isinstance(strategy, FedDyn) else 0.0
