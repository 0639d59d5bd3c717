"""Client selection: who of the online clients trains each round (``strategy.selection``).

A plug-in point of the same shape as strategies: a shipped short name (``random``,
``oort``), an entry point of ``fl_ee.selection``, or ``package.module:Class`` naming a
:class:`~strategies.base.Selection` subclass whose ``__init__`` keywords after ``seed`` are
its options (``strategy.selection_options``). The server tells it, after each round, each
trained client's example count, loss and simulated duration
(:meth:`~strategies.base.Selection.feedback`); what it keeps across rounds is
checkpointed (:meth:`~strategies.base.Selection.state_dict`, JSON values only).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fl_ee.core.config import Config
from fl_ee.core.plugins import build, check_option, plugin_class, registered
from fl_ee.core.seeding import Stream, rng
from strategies.base import ClientInfo, Feedback, Selection, is_number

ENTRY_POINT_GROUP = "fl_ee.selection"
SHIPPED = {"random": "strategies.base:Selection", "oort": "strategies.selection:Oort"}


@dataclass(frozen=True)
class Explored:
    """What Oort knows of a client it has tried: its statistical utility, when it last trained, how long it took."""

    utility: float
    last_round: int
    duration_s: float


def oort_utility(num_examples: int, loss: float) -> float:
    """Oort's statistical utility ``|B| x sqrt(mean loss^2)``, from the mean loss a client reports.

    fl-ee's clients report their mean batch loss, not each sample's: ``sqrt(mean l^2)`` is taken
    as that mean (a lower bound of it).
    """
    return num_examples * abs(loss)


def oort_score(known: Explored, server_round: int, preferred_s: float, alpha: float, staleness: float) -> float:
    """A tried client's Oort score in ``server_round``.

    ``(utility + sqrt(staleness x ln(round) / last_round)) x (preferred_s / duration_s)^alpha``,
    the factor only where the client is slower than the preferred round duration.
    """
    score = known.utility + math.sqrt(staleness * math.log(server_round) / known.last_round)
    if preferred_s > 0 and known.duration_s > preferred_s:
        score *= (preferred_s / known.duration_s) ** alpha
    return score


class Oort(Selection):
    """Oort (Lai et al., OSDI 2021): exploit clients of high statistical utility that are fast enough, explore the rest.

    Each round a share ``epsilon x decay^(round - 1)`` (at least ``min_epsilon``) of the slots
    goes to clients never tried, drawn at random; the others to tried clients, drawn with
    chance proportional to :func:`oort_score` among those scoring at least ``cutoff`` times
    the score of the last slot's client. ``preferred_duration_s`` is the round duration T
    beyond which slow clients are penalised by ``(T / t)^alpha`` (0: the median duration
    of the tried clients).
    """

    def __init__(
        self, seed: int = 0, *, alpha: float = 2.0, epsilon: float = 0.9, epsilon_decay: float = 0.98,
        min_epsilon: float = 0.2, cutoff: float = 0.95, staleness: float = 0.1, preferred_duration_s: float = 0.0,
    ) -> None:
        super().__init__(seed)
        for name, value, low, high in [("alpha", alpha, 0, math.inf), ("epsilon", epsilon, 0, 1),
                                       ("epsilon_decay", epsilon_decay, 0, 1), ("min_epsilon", min_epsilon, 0, 1),
                                       ("cutoff", cutoff, 0, 1), ("staleness", staleness, 0, math.inf),
                                       ("preferred_duration_s", preferred_duration_s, 0, math.inf)]:
            check_option(is_number(value) and low <= value <= high, name, f"must be a number in [{low}, {high}], "
                                                                          f"got {value!r}")
        self.alpha, self.epsilon, self.epsilon_decay, self.min_epsilon = alpha, epsilon, epsilon_decay, min_epsilon
        self.cutoff, self.staleness, self.preferred_duration_s = cutoff, staleness, preferred_duration_s
        self.explored: dict[int, Explored] = {}

    def exploration(self, server_round: int) -> float:
        """The share of slots for clients never tried in ``server_round``."""
        return max(self.min_epsilon, self.epsilon * self.epsilon_decay ** (server_round - 1))

    def preferred_s(self) -> float:
        """The preferred round duration T: the option, or the tried clients' median duration."""
        if self.preferred_duration_s or not self.explored:
            return self.preferred_duration_s
        return statistics.median(k.duration_s for k in self.explored.values())

    def select(self, server_round: int, pool: Sequence[ClientInfo], size: int) -> list[ClientInfo]:
        """Explore ``round(share x size)`` untried clients (fewer where fewer are untried), exploit the rest."""
        tried = [c for c in pool if c.client_id in self.explored]
        untried = [c for c in pool if c.client_id not in self.explored]
        explore = min(len(untried), max(size - len(tried), round(self.exploration(server_round) * size)))
        generator = rng(self.seed, Stream.SAMPLE_TRAIN, server_round)
        chosen = [untried[i] for i in generator.choice(len(untried), size=explore, replace=False)]
        exploit = size - explore
        if exploit:
            preferred = self.preferred_s()
            score = {c.client_id: oort_score(self.explored[c.client_id], server_round, preferred, self.alpha,
                                             self.staleness) for c in tried}
            ranked = sorted(tried, key=lambda c: (-score[c.client_id], c.client_id))
            floor = self.cutoff * score[ranked[exploit - 1].client_id]
            candidates = [c for c in ranked if score[c.client_id] >= floor]
            weights = np.array([score[c.client_id] for c in candidates])
            chance = weights / weights.sum() if np.count_nonzero(weights) >= exploit else None  # else: uniform
            picks = generator.choice(len(candidates), size=exploit, replace=False, p=chance)
            chosen += [candidates[i] for i in picks]
        return sorted(chosen, key=lambda c: c.client_id)

    def feedback(self, server_round: int, results: Sequence[Feedback]) -> None:
        """Each trained client's utility, round and duration replace what was known of it."""
        for r in results:
            self.explored[r.client_id] = Explored(oort_utility(r.num_examples, r.loss), server_round, r.duration_s)

    def state_dict(self) -> dict[str, Any]:
        """Every tried client's ``[utility, last_round, duration_s]`` by client id."""
        return {"explored": {str(c): [k.utility, k.last_round, k.duration_s] for c, k in self.explored.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.explored = {int(c): Explored(float(u), int(r), float(d)) for c, (u, r, d) in state["explored"].items()}


def available() -> dict[str, str]:
    """Every short name (shipped and entry-point plug-ins) to its ``module:Class`` path."""
    return registered(SHIPPED, ENTRY_POINT_GROUP)


def build_selection(cfg: Config) -> Selection:
    """The configured selection; ``strategy.selection_options`` become its keyword arguments."""
    name = cfg.strategy.selection
    cls = plugin_class(name, available(), Selection, kind="selection", base_name="strategies.base.Selection",
                       key="strategy.selection")
    return build(cls, name, cfg.strategy.selection_options, {"seed": cfg.seed}, "strategy.selection_options")
