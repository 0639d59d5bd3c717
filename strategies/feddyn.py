"""FedDyn's server-side correction, as DepthFL applies it per tensor over the tensor's holders.

Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021; holder-aware
form from Kim et al., "DepthFL", ICLR 2023 (Flower baseline ``baselines/depthfl``,
``strategy.py``), which runs it with ``alpha = 0.1``. For a tensor held by ``n_k`` of
the ``M`` clients, with holders' average ``a`` and current value ``w``::

    h <- h - alpha * (n_k / M) * (a - w)
    w <- a - h / alpha

``h`` is kept per tensor on the server (checkpointed as ``h/<key>`` by
:meth:`~FedDyn.state_dict`); ``a`` is example-weighted unless ``weighted=false``
(DepthFL's unweighted average). Only the server side is here: FedDyn's client
adds ``-<grad_prev, w> + (alpha/2)||w - w_global||^2``; ``training.prox_mu = alpha`` gives
the quadratic part, the linear part is not implemented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from strategies.base import check_option, is_number
from strategies.depthfl import DepthFL


def feddyn_correction(
    average: np.ndarray, current: np.ndarray, h: np.ndarray, alpha: float, holders: int, num_clients: int
) -> tuple[np.ndarray, np.ndarray]:
    """The corrected new value and the new ``h`` (float64) of one tensor."""
    average, current = np.asarray(average, np.float64), np.asarray(current, np.float64)
    h = h - alpha * holders / num_clients * (average - current)
    return average - h / alpha, h


class FedDyn(DepthFL):
    """FedDyn: DepthFL's dynamic-regularisation correction (alpha) on the holders' average."""

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
