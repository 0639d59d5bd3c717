"""Fault isolation: what the server checks in every update and aggregate, and how a run stops.

A client update is checked against what its client algorithm sends of the slice it was
sent (:meth:`sims.emulator.DeviceEmulator.update_of`: the same keys, shapes and dtypes,
every value finite); a failing one is *rejected*, never averaged in. A strategy's
aggregate is checked against the global state: a wrong key, shape or dtype is a fault of
the strategy (:class:`StrategyFault`); non-finite values are rejected and the global
model keeps its value. Rounds whose training stays non-finite are counted by
:class:`DivergenceGuard`, which stops the run (:class:`Diverged`) after
``simulation.max_bad_rounds`` of them in a row. A client whose Ray worker died
(:mod:`sims.workers`) has failed, with a reason :func:`lost_worker` recognises, and each
round that lost workers says so in one line (:func:`lost_workers_warning`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

NON_FINITE = "non-finite"  # the start of every reason that counts towards divergence
_LOST = "fl-ee: the Ray worker (actor {actor}) running this client died; a fresh worker took its place"
_LOST_LINE = re.compile(r"^fl-ee: the Ray worker \(actor (\w+)\) running this client died", re.MULTILINE)


class StrategyFault(Exception):
    """A strategy (shipped or plug-in) raised, or broke its contract, in one of its methods."""

    def __init__(self, strategy: str, method: str, server_round: int, detail: str) -> None:
        super().__init__(f"strategy {strategy} failed in {method} (round {server_round}): {detail}")
        self.strategy, self.method, self.server_round = strategy, method, server_round


class Diverged(Exception):
    """Training stayed non-finite for too many rounds in a row."""

    def __init__(self, server_round: int, bad_rounds: int) -> None:
        first = server_round - bad_rounds + 1
        span = f"round {server_round}" if bad_rounds == 1 else f"rounds {first}-{server_round}"
        super().__init__(f"training diverged: no finite update or aggregate in {span} "
                         f"(simulation.max_bad_rounds = {bad_rounds})")
        self.server_round = server_round


def _mismatch(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> str | None:
    """Why ``got`` does not have exactly the keys, shapes and dtypes of ``expected`` (``None`` if it does)."""
    if set(got) != set(expected):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        parts = [f"missing {', '.join(missing[:3])}" if missing else "",
                 f"unexpected {', '.join(extra[:3])}" if extra else ""]
        return "; ".join(p for p in parts if p)
    for key, want in expected.items():
        have = got[key]
        if have.shape != want.shape or have.dtype != want.dtype:
            return f"{key} is {have.dtype}{list(have.shape)}, expected {want.dtype}{list(want.shape)}"
    return None


def _non_finite(arrays: Mapping[str, np.ndarray]) -> str | None:
    """``"non-finite values in KEY"`` for the first array holding NaN or infinity."""
    for key, value in arrays.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            return f"{NON_FINITE} values in {key}"
    return None


def update_problem(sent: Mapping[str, np.ndarray], returned: Mapping[str, np.ndarray]) -> str | None:
    """Why a client's update cannot be aggregated, or ``None``: same keys, shapes, dtypes as sent; finite."""
    return _mismatch(sent, returned) or _non_finite(returned)


def aggregate_problem(
    current: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]
) -> tuple[str | None, str | None]:
    """(a broken contract, non-finite values) of a strategy's new global state; ``None`` where fine."""
    return _mismatch(current, new), _non_finite(new)


class DivergenceGuard:
    """Counts rounds in a row whose training produced nothing finite, and stops the run at ``limit``."""

    def __init__(self, limit: int, bad_in_a_row: int = 0) -> None:
        self.limit = limit
        self.bad_in_a_row = bad_in_a_row  # carried over by a resumed run

    def after_round(self, server_round: int, bad: bool) -> None:
        """Record one round; raise :class:`Diverged` at the ``limit``-th bad round in a row."""
        self.bad_in_a_row = self.bad_in_a_row + 1 if bad else 0
        if self.bad_in_a_row >= self.limit:
            raise Diverged(server_round, self.bad_in_a_row)


def is_non_finite(reason: Any) -> bool:
    """Whether a rejection reason is about non-finite values."""
    return isinstance(reason, str) and reason.startswith(NON_FINITE)


def error_line(reason: str) -> str:
    """The last line of an error reply's reason (a traceback ends with the exception)."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def worker_lost_reason(actor: str, exception: str, ray_says: str) -> str:
    """An error reply's reason when the Ray worker (``actor``, its id) running a client died.

    Our line, Ray's account, then one line naming Ray's ``exception`` (the last line is
    what :func:`error_line` keeps).
    """
    return f"{_LOST.format(actor=actor)}\n{ray_says.strip()}\n{exception}: the Ray worker died"


def lost_worker(reason: str) -> str | None:
    """The actor id in a reason written by :func:`worker_lost_reason`, else ``None``."""
    found = _LOST_LINE.search(reason)
    return found.group(1) if found else None


def all_lost(reasons: Sequence[str | None]) -> bool:
    """Whether every one of these error reasons is a lost Ray worker (the run goes on: nothing is wrong with it)."""
    return all(lost_worker(reason or "") for reason in reasons)


def lost_workers_warning(server_round: int, errors: Mapping[str, Mapping[int, str]]) -> str | None:
    """The line saying a round lost Ray workers, from its errors (step -> client id -> reason); ``None`` if none."""
    lost = [(client, actor) for by_client in errors.values() for client, reason in by_client.items()
            if (actor := lost_worker(reason))]
    if not lost:
        return None
    clients, workers = (len(set(column)) for column in zip(*lost))
    died = "a Ray worker died" if workers == 1 else f"{workers} Ray workers died"
    return f"{died} in round {server_round} ({clients} client{'' if clients == 1 else 's'} failed); replaced"
