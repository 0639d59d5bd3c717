"""Adaptive server optimisers on each shared tensor's pseudo-gradient (FedOpt), holder-aware.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021; conventions of Flower's
``flwr.serverapp.strategy.FedOpt``. For a tensor with holders, the pseudo-gradient is
``delta = a - w`` (holders' average minus current value) and::

    m <- beta_1 m + (1 - beta_1) delta
    v <- second_moment(v, delta)            # FedAdam / FedYogi differ here
    w <- w + step_size(t) * m / (sqrt(v) + tau)

``m``, ``v`` and the step count ``t`` are kept per tensor and advance only in rounds in
which the tensor has holders; a tensor nobody returned neither moves nor updates them.
They are the strategy's :meth:`~FedOpt.state_dict` (``m/<key>``, ``v/<key>``, ``t/<key>``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from strategies.base import check_option, is_number
from strategies.depthfl import DepthFL


class FedOpt(DepthFL):
    """Base of the server optimisers: per-tensor moments over DepthFL's holders' average."""

    partial_tensors = False  # its state is per whole tensor: no width-scaled tiers

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

    def state_dict(self) -> dict[str, Any]:
        """The moments and step count of every tensor updated so far: ``m/<key>``, ``v/<key>`` (arrays), ``t/<key>``."""
        return {
            **{f"m/{k}": v for k, v in self.m.items()},
            **{f"v/{k}": v for k, v in self.v.items()},
            **{f"t/{k}": t for k, t in self.t.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the moments and step counts of :meth:`state_dict`."""
        parts: dict[str, dict[str, Any]] = {"m": {}, "v": {}, "t": {}}
        for name, value in state.items():
            kind, _, key = name.partition("/")
            if kind not in parts or not key:
                raise ValueError(f"{type(self).__name__}: unexpected state entry {name!r}")
            parts[kind][key] = value
        self.m = {k: np.asarray(v, np.float64) for k, v in parts["m"].items()}
        self.v = {k: np.asarray(v, np.float64) for k, v in parts["v"].items()}
        self.t = {k: int(t) for k, t in parts["t"].items()}
