"""Observers follow a run: the round loop tells each of them when it starts, after every round, and at the end.

The run directory, the progress bar and the checkpoints are observers; adding another
(a TensorBoard writer) touches no loop code. Each hook does nothing by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fl_ee.checkpoint import LoopState
    from fl_ee.config import Config
    from strategies import ClientInfo, DepthAwareStrategy


class Observer:
    """A follower of one run; override the hooks you need."""

    def on_start(self, cfg: Config, clients: Sequence[ClientInfo]) -> None:
        """The federation is known: the resolved config and every client, in client-id order."""

    def after_round(self, record: Mapping[str, Any]) -> None:
        """A round finished; ``record`` is its ``rounds.jsonl`` line."""

    def after_state(self, state: LoopState, strategy: DepthAwareStrategy) -> None:
        """After every observer's :meth:`after_round`: the loop's whole state, which a checkpoint saves.

        ``state`` and ``strategy`` are the loop's own, to read and never to change.
        """

    def on_end(self, summary: Mapping[str, Any], client_rows: Sequence[Mapping[str, Any]]) -> None:
        """Every round finished: ``summary.json`` and the ``clients.csv`` rows."""
