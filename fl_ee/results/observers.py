"""Observers follow a run: the round loop tells each of them when it starts, after every round, and at the end.

:class:`LoopState` is what the loop carries from round to round: observers read it, and
the checkpoints (:mod:`fl_ee.federation.checkpoint`) save and restore it.

The run directory, the progress bar and the checkpoints are observers; adding another
(a TensorBoard writer) touches no loop code. Each hook does nothing by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

    from fl_ee.core.config import Config
    from fl_ee.results.summary import Evaluation
    from strategies import ClientInfo, DepthAwareStrategy


@dataclass
class LoopState:
    """What the round loop carries from one round to the next, besides the strategy's own state.

    ``round`` is the last finished round (0 before the first); ``results`` each client's
    latest evaluation by client id; ``global_eval`` the global model's latest
    evaluation (``by_exit`` and ``ensemble``, as :func:`fl_ee.federation.globaleval.global_accuracy`);
    ``clocks`` every round's clock record; ``accuracy_at`` the (virtual
    time, personalised mean) of every evaluation round.
    """

    arrays: ArrayRecord
    round: int = 0
    results: dict[int, Evaluation] = field(default_factory=dict)
    global_eval: dict[str, Any] = field(default_factory=dict)
    clocks: list[dict[str, Any]] = field(default_factory=list)
    accuracy_at: list[tuple[float, float | None]] = field(default_factory=list)
    bad_rounds: int = 0  # rounds in a row with nothing finite to aggregate (fl_ee/federation/faults.py)
    async_state: dict[str, Any] = field(default_factory=dict)  # an async run's server (federation/asynchronous.py)

    @property
    def virtual_time_s(self) -> float:
        """The virtual clock after the last finished round."""
        return float(self.clocks[-1]["virtual_time_s"]) if self.clocks else 0.0


class Observer:
    """A follower of one run; override the hooks you need."""

    def on_start(self, cfg: Config, clients: Sequence[ClientInfo]) -> None:
        """The federation is known: the resolved config and every client, in client-id order."""

    def after_round(self, record: Mapping[str, Any]) -> None:
        """A round finished; ``record`` is its ``rounds.jsonl`` line, with ``client_errors`` and ``placement``."""

    def after_state(self, state: LoopState, strategy: DepthAwareStrategy) -> None:
        """After every observer's :meth:`after_round`: the loop's whole state, which a checkpoint saves.

        ``state`` and ``strategy`` are the loop's own, to read and never to change.
        """

    def on_end(self, summary: Mapping[str, Any], client_rows: Sequence[Mapping[str, Any]]) -> None:
        """Every round finished: ``summary.json`` and the ``clients.csv`` rows."""
