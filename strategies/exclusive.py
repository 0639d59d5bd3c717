"""Exclusive learning: only the clients that can hold the full model train it.

The baseline of DepthFL (Kim et al., ICLR 2023, "exclusive learning") and HeteroFL
(Diao et al., ICLR 2021): federated averaging restricted to the clients whose tier holds
the deepest depth of the run; shallower clients never train and are served the
corresponding slice of that model.
"""

from __future__ import annotations

from collections.abc import Iterable

from strategies.base import ClientInfo
from strategies.depthfl import DepthFL


def full_depth_clients(clients: Iterable[ClientInfo]) -> list[ClientInfo]:
    """The clients whose depth is the deepest among ``clients``."""
    clients = list(clients)
    deepest = max((c.depth for c in clients), default=0)
    return [c for c in clients if c.depth == deepest]


class Exclusive(DepthFL):
    """Exclusive learning: only clients holding the full depth train (DepthFL/HeteroFL baseline).

    They are sampled at ``fraction_train`` among themselves and averaged as ``depthfl``.
    """

    def train_pool(self) -> list[ClientInfo]:
        """Only the clients of the run's deepest tier train."""
        return full_depth_clients(self.clients.values())
