"""FedYogi: Yogi as the server optimiser on each shared tensor's pseudo-gradient.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Yogi: Zaheer et al.,
NeurIPS 2018); defaults and conventions of Flower's ``flwr.serverapp.strategy.FedYogi``
(eta 0.01, beta_1 0.9, beta_2 0.99, tau 1e-3; v starts at 0; no bias correction).
``v <- v - (1 - beta_2) delta^2 sign(v - delta^2)``: v grows no faster than Adam's.
"""

from __future__ import annotations

import numpy as np

from strategies.fedopt import FedOpt


class FedYogi(FedOpt):
    """FedYogi: Yogi server optimiser on each tensor's pseudo-gradient (eta, beta_1, beta_2, tau)."""

    def __init__(
        self, *, eta: float = 1e-2, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3, **kwargs
    ) -> None:
        super().__init__(eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau, **kwargs)

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The second-moment update of the module docstring."""
        return v - (1 - self.beta_2) * delta**2 * np.sign(v - delta**2)
