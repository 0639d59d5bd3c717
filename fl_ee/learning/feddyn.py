"""FedDyn's client side (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021).

With ``strategy.name = "feddyn"`` each client adds to its shared step's loss, over the
shared tensors it trains (every parameter of its submodel; only the exits' once
``ic-only`` froze the backbone)::

    - <g_prev, w> + (alpha / 2) ||w - w_received||^2

and after its local training updates ``g_prev <- g_prev - alpha (w - w_received)``
(the paper's first-order condition; the signs of Flower's DepthFL baseline,
``baselines/depthfl/depthfl/models.py``). ``g_prev`` is the client's own state,
kept per parameter under ``feddyn/<key>`` (:data:`NAMESPACE`) between its rounds; a
client's first round starts it from zeros. The server half is
:mod:`strategies.feddyn`. Nothing here knows about Flower.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

NAMESPACE = "feddyn"


def feddyn_penalty(
    params: Iterable[torch.Tensor], g_prev: Iterable[torch.Tensor], received: Iterable[torch.Tensor], alpha: float
) -> torch.Tensor:
    """``-sum <g_prev, w> + (alpha / 2) sum ||w - w_received||^2`` over matching tensors."""
    terms = [-(g * w).sum() + alpha / 2 * ((w - w0) ** 2).sum()
             for w, g, w0 in zip(params, g_prev, received, strict=True)]
    return functools.reduce(operator.add, terms)


class FedDynTerm:
    """One client's FedDyn term in one round: its ``g_prev`` and the weights it received.

    Built before local training, from the received ``model`` and the client's ``state``
    (its ``feddyn/<key>`` arrays, zeros where absent).
    """

    def __init__(self, alpha: float, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        self.alpha = alpha
        self.received = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.g_prev = {name: state[f"{NAMESPACE}/{name}"].to(w.device, w.dtype) if f"{NAMESPACE}/{name}" in state
                       else torch.zeros_like(w) for name, w in self.received.items()}

    def penalty(self, module: nn.Module, prefix: str = "") -> Callable[[], torch.Tensor]:
        """The term over ``module``'s parameters, whose names in the model are ``prefix + name``."""
        names = [prefix + name for name, _ in module.named_parameters()]
        params = [p for _, p in module.named_parameters()]
        g_prev, received = [self.g_prev[n] for n in names], [self.received[n] for n in names]
        return lambda: feddyn_penalty(params, g_prev, received, self.alpha)

    def state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``g_prev - alpha (w - w_received)`` of every parameter of the trained ``model``, as ``feddyn/<key>``.

        A tensor the round did not train (the backbone under ``ic-only``) keeps its ``g_prev``.
        """
        return {f"{NAMESPACE}/{name}": self.g_prev[name] - self.alpha * (w.detach() - self.received[name])
                for name, w in model.named_parameters()}
