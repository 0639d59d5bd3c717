"""Adaptive server optimisers on each shared tensor's pseudo-gradient (FedOpt), holder-aware.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021; conventions of Flower's
``flwr.serverapp.strategy.FedOpt``. For a tensor with holders, the pseudo-gradient is
``delta = a - w`` (holders' average minus current value) and::

    m <- beta_1 m + (1 - beta_1) delta
    v <- second_moment(v, delta)            # FedAdam / FedYogi differ here
    w <- w + step_size(t) * m / (sqrt(v) + tau)

``m``, ``v`` and the step count ``t`` are kept per tensor and advance only in rounds in
which the tensor has holders; a tensor nobody returned neither moves nor updates them.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import numpy as np

from strategies.base import check_option, is_number
from strategies.depthfl import DepthFL


class FedOpt(DepthFL):
    """Base of the server optimisers: per-tensor moments over DepthFL's holders' average."""

    def __init__(self, *, eta: float, beta_1: float, beta_2: float, tau: float, **kwargs) -> None:
        super().__init__(**kwargs)
        check_option(is_number(eta) and eta > 0, "eta", f"must be a number > 0, got {eta!r}")
        check_option(is_number(beta_1) and 0 <= beta_1 < 1, "beta_1", f"must be a number in [0, 1), got {beta_1!r}")
        check_option(is_number(beta_2) and 0 <= beta_2 < 1, "beta_2", f"must be a number in [0, 1), got {beta_2!r}")
        check_option(is_number(tau) and tau > 0, "tau", f"must be a number > 0, got {tau!r}")
        self.eta, self.beta_1, self.beta_2, self.tau = float(eta), float(beta_1), float(beta_2), float(tau)
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}
        self.t: dict[str, int] = {}

    @abstractmethod
    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The new second moment from the old one and this round's pseudo-gradient."""

    def step_size(self, t: int) -> float:
        """The server learning rate at a tensor's ``t``-th update (1-based)."""
        return self.eta

    def aggregate_tensor(
        self, key: str, values: Sequence[np.ndarray], weights: Sequence[float], current: np.ndarray
    ) -> np.ndarray:
        """The new value of one shared tensor from its holders (see the module docstring)."""
        w = np.asarray(current, np.float64)
        delta = np.asarray(super().aggregate_tensor(key, values, weights, current), np.float64) - w
        m = self.beta_1 * self.m.get(key, np.zeros_like(w)) + (1 - self.beta_1) * delta
        v = self.second_moment(self.v.get(key, np.zeros_like(w)), delta)
        t = self.t.get(key, 0) + 1
        self.m[key], self.v[key], self.t[key] = m, v, t
        return (w + self.step_size(t) * m / (np.sqrt(v) + self.tau)).astype(current.dtype)
