"""FedAdam: Adam as the server optimiser on each shared tensor's pseudo-gradient.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021; defaults of Flower's
``flwr.serverapp.strategy.FedAdam`` (eta 0.1, beta_1 0.9, beta_2 0.99, tau 1e-3).
``v <- beta_2 v + (1 - beta_2) delta^2``, with Adam's bias-corrected step
``eta sqrt(1 - beta_2^t) / (1 - beta_1^t)`` (Kingma & Ba). ``t`` counts the rounds this
tensor had holders (Flower uses ``server_round + 1`` for every tensor).
"""

from __future__ import annotations

import numpy as np

from strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    """FedAdam: Adam server optimiser on each tensor's pseudo-gradient (eta, beta_1, beta_2, tau)."""

    def __init__(
        self, *, eta: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3, **kwargs
    ) -> None:
        super().__init__(eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau, **kwargs)

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The second-moment update of the module docstring."""
        return self.beta_2 * v + (1 - self.beta_2) * delta**2

    def step_size(self, t: int) -> float:
        """Adam's bias-corrected server learning rate at the tensor's ``t``-th update."""
        return self.eta * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
