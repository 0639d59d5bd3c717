"""Asynchronous federations on the virtual clock: who is in flight, who arrives next, and how stale it is.

Pure bookkeeping, nothing here waits. The server keeps ``concurrency`` clients training;
each starts at a virtual time from the server's current version and arrives after its
round time (:class:`Timeline`); every ``buffer_size`` arrivals make a new server version
(FedBuff, Nguyen et al., AISTATS 2022; ``buffer_size = 1`` is FedAsync, Xie et al. 2019).
An update's *staleness* is the number of versions made since its client started, and
it weighs in by :func:`staleness_weight`.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


def staleness_weight(kind: str, staleness: int, a: float = 0.5, b: int = 4) -> float:
    """The weight of an update ``staleness`` server versions old (Xie et al. 2019, FedAsync).

    ``constant``: 1; ``polynomial``: ``(1 + s)^-a``; ``hinge``: 1 for ``s <= b``, else
    ``1 / (a (s - b) + 1)``.
    """
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1 + staleness) ** -a)
    if kind == "hinge":
        return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1)
    raise ValueError(f"unknown staleness function {kind!r}")


@dataclass(frozen=True, order=True)
class Job:
    """One client's training on the virtual clock: from ``start_s`` (at server ``version``) to ``finish_s``.

    Ordered by finish time, ties by ``seq`` (the order the server started them in).
    """

    finish_s: float
    seq: int
    client_id: int
    version: int
    start_s: float


class Timeline:
    """The clients in flight, each arriving at its virtual finish time: a priority queue by (finish, start order)."""

    def __init__(self) -> None:
        self._heap: list[Job] = []
        self.started = 0  # jobs started so far: the next job's seq

    @classmethod
    def of(cls, jobs: Sequence[Job], started: int) -> Timeline:
        """A timeline with ``jobs`` in flight, ``started`` jobs started so far (a checkpoint's)."""
        timeline = cls()
        timeline._heap = sorted(jobs)
        timeline.started = started
        return timeline

    def __len__(self) -> int:
        """How many clients are in flight."""
        return len(self._heap)

    def jobs(self) -> tuple[Job, ...]:
        """The jobs in flight (in no particular order)."""
        return tuple(self._heap)

    def busy(self) -> set[int]:
        """The clients in flight."""
        return {job.client_id for job in self._heap}

    def start(self, client_id: int, version: int, start_s: float, duration_s: float) -> Job:
        """Start ``client_id`` at ``start_s`` from server ``version``; it arrives ``duration_s`` later."""
        job = Job(start_s + duration_s, self.started, client_id, version, start_s)
        self.started += 1
        heapq.heappush(self._heap, job)
        return job

    def next(self) -> Job:
        """The next arrival (the in-flight job that finishes first), taken off the timeline."""
        return heapq.heappop(self._heap)
