"""Exclusive learning: only the clients that can hold the full model train it.

The baseline of DepthFL (Kim et al., ICLR 2023, "exclusive learning") and HeteroFL
(Diao et al., ICLR 2021): federated averaging restricted to the clients whose tier holds
the deepest depth of the run; shallower clients never train and are served the
corresponding slice of that model. With width tiers, the full model is the deepest and
widest submodel of the run: only the clients holding both train.
"""

from __future__ import annotations

from collections.abc import Iterable

from strategies.base import ClientInfo
from strategies.depthfl import DepthFL


def full_model_clients(clients: Iterable[ClientInfo]) -> list[ClientInfo]:
    """The clients whose depth is the deepest and whose width the widest among ``clients``."""
    clients = list(clients)
    deepest = max((c.depth for c in clients), default=0)
    widest = max((c.width for c in clients), default=0.0)
    return [c for c in clients if c.depth == deepest and c.width == widest]


class Exclusive(DepthFL):
    """Exclusive learning: only clients holding the full depth (and width) train (DepthFL/HeteroFL baseline).

    They are sampled at ``fraction_train`` among themselves and averaged as ``depthfl``.
    """

    def train_pool(self) -> list[ClientInfo]:
        """Only the clients of the run's deepest (and widest) tier train."""
        return full_model_clients(self.clients.values())
