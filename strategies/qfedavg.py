"""q-FedAvg: q-FFL's fairness reweighting by local loss, per tensor over its holders.

Li et al., "Fair Resource Allocation in Federated Learning", ICLR 2020; conventions of
Flower's ``flwr.serverapp.strategy.QFedAvg``. With ``L = 1 / client_learning_rate``,
client k's loss ``F_k`` at the received weights ``w`` (its ``initial-loss``) and its
returned weights ``w_k``::

    Delta_k = L (w - w_k)
    h_k     = q F_k^(q-1) ||Delta_k||^2 + L F_k^q      (norm over every tensor k returned)
    w      <- w - sum_k F_k^q Delta_k / sum_k h_k     (sums over the tensor's holders)

A width-scaled client returns the leading corner of each tensor: its ``Delta_k`` is over
that corner, and each element's sums run over the holders of that element.

Larger ``q`` weighs high-loss clients more; ``q = 0`` is the unweighted mean of holders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fl_ee.models.state import corner
from fl_ee.wire.protocol import ARRAYS, Instructions, TrainReply, payload_of
from strategies.aggregation import holder_aggregate
from strategies.base import DepthAwareStrategy, check_option, is_number, to_numpy, to_record

EPS = 1e-10  # as Flower: keeps F^(q-1) finite at zero loss


def qffl_aggregate(
    updates: Sequence[Mapping[str, np.ndarray]],
    losses: Sequence[float],
    current: Mapping[str, np.ndarray],
    q: float,
    lipschitz: float,
) -> dict[str, np.ndarray]:
    """The q-FedAvg step, each tensor combined over the clients that returned it."""
    scales = []  # per client: (F^q, h)
    for update, loss in zip(updates, losses, strict=True):
        sq_norm = sum(float(np.sum((lipschitz * (np.float64(current[k][corner(np.shape(u))]) - u)) ** 2))
                      for k, u in update.items())
        f = loss + EPS
        scales.append((f**q, q * f ** (q - 1) * sq_norm + lipschitz * f**q))

    def rule(
        key: str, values: Sequence[np.ndarray], holders: Sequence[tuple[float, float]], w: np.ndarray
    ) -> np.ndarray:
        w64 = np.asarray(w, np.float64)
        step = sum(fq * lipschitz * (w64 - v) for v, (fq, _) in zip(values, holders))
        return (w64 - step / sum(h for _, h in holders)).astype(w.dtype)

    return holder_aggregate(updates, scales, current, rule)


def _initial_loss(reply: Message) -> float:
    loss = payload_of(reply, TrainReply).initial_loss
    if loss is None:
        raise ValueError("a training reply lacks the initial-loss q-FedAvg asked for")
    return loss


class QFedAvg(DepthAwareStrategy):
    """q-FedAvg: q-FFL fairness, clients weighed up by their local loss to the power q.

    ``client_learning_rate`` sets ``L = 1 / client_learning_rate``; by default it is the
    learning rate the round's instructions give the clients (``training.lr`` under its
    ``lr_schedule``).
    """

    def __init__(self, *, q: float = 0.1, client_learning_rate: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        check_option(not self.fednova, "fednova", "q-FedAvg weighs updates its own way; it takes no FedNova")
        check_option(is_number(q) and q >= 0, "q", f"must be a number >= 0, got {q!r}")
        check_option(client_learning_rate is None or (is_number(client_learning_rate) and client_learning_rate > 0),
                     "client_learning_rate", f"must be a number > 0, got {client_learning_rate!r}")
        self.q = float(q)
        self.client_learning_rate = client_learning_rate
        self._lr: float | None = client_learning_rate

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample as the base strategy does, asking every client for its ``initial-loss``."""
        instructions = Instructions.from_record(config)
        if self.client_learning_rate is None:
            self._lr = instructions.config.training.lr if instructions.lr is None else instructions.lr
        asking = dataclasses.replace(instructions, want_initial_loss=True).to_record()
        return super().configure_train(server_round, arrays, asking, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """q-FedAvg over the valid replies, weighing each by its ``initial-loss``."""
        valid = self.valid_replies(replies)
        if not valid or self._sent is None or self._lr is None:
            return None, None
        updates = [to_numpy(m.content.array_records[ARRAYS]) for m in valid]
        losses = [_initial_loss(m) for m in valid]
        new = qffl_aggregate(updates, losses, to_numpy(self._sent), self.q, 1.0 / self._lr)
        return to_record(new), self._mean_metrics(valid)
