"""Asynchronous federations on the virtual clock: who is in flight, who arrives next, and how stale it is.

Pure bookkeeping, nothing here waits. The server keeps ``concurrency`` clients training;
each starts at a virtual time from the server's current version and arrives after its
round time (:class:`Timeline`); every ``buffer_size`` arrivals make a new server version
(FedBuff, Nguyen et al., AISTATS 2022; ``buffer_size = 1`` is FedAsync, Xie et al. 2019).
An update's *staleness* is the number of versions made since its client started, and
it weighs in by :func:`staleness_weight`. Under an availability trace (:class:`Schedule`)
only clients online may start, a free slot waits for the next to come online, and a
client that goes offline before it finishes drops then.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from sims.traces import Intervals, next_online, online_until


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

    def start(self, client_id: int, version: int, start_s: float, finish_s: float) -> Job:
        """Start ``client_id`` at ``start_s`` from server ``version``; it arrives at ``finish_s``."""
        job = Job(finish_s, self.started, client_id, version, start_s)
        self.started += 1
        heapq.heappush(self._heap, job)
        return job

    def first(self) -> Job:
        """The next arrival (the in-flight job that finishes first), left on the timeline."""
        return self._heap[0]

    def next(self) -> Job:
        """The next arrival (the in-flight job that finishes first), taken off the timeline."""
        return heapq.heappop(self._heap)


class Schedule:
    """The async server's virtual clock and slots: who may start now, and what happens next.

    ``slots`` clients of ``pool`` train at once. Under an availability ``trace`` only the
    idle clients online now may start; where a slot is free and none is, the clock moves on
    to the next arrival or to the moment the next idle client comes online, whichever is
    first (``waited_s`` adds up the virtual time a slot stood free); nothing busy-waits, each
    move goes straight to the next event. Without a trace every idle client may start.
    """

    def __init__(self, slots: int, pool: Sequence[int], trace: Mapping[int, Intervals] | None = None) -> None:
        self.slots, self.pool, self.trace = slots, list(pool), trace
        self.timeline = Timeline()
        self.now = 0.0
        self.waited_s = 0.0

    def _idle(self) -> list[int]:
        busy = self.timeline.busy()
        return [c for c in self.pool if c not in busy]

    def startable(self) -> list[int]:
        """The clients that may start now: idle and online; none while every slot is taken."""
        if len(self.timeline) >= self.slots:
            return []
        if self.trace is None:
            return self._idle()
        return [c for c in self._idle() if online_until(self.trace.get(c), self.now) is not None]

    def start(self, client_id: int, version: int, finish_s: float) -> Job:
        """Start ``client_id`` now from server ``version``; it arrives (or drops) at ``finish_s``."""
        return self.timeline.start(client_id, version, self.now, finish_s)

    def wake(self) -> float | None:
        """When a free slot can next be filled: when an idle client is next online (``None``: no slot free, or none)."""
        if self.trace is None or len(self.timeline) >= self.slots:
            return None
        return next_online(self.trace, self._idle(), self.now)

    def arrivals(self, fill: Callable[[list[int]], object]) -> Iterator[Job]:
        """The arrivals in virtual-time order, each taken off the timeline, until nothing can happen again.

        Before each move of the clock, ``fill(ids)`` is called while a slot is free and some
        clients may start (``ids``, in pool order); it must :meth:`start` one of them. The clock
        then moves to the next arrival, or, where a slot is free and an idle client comes online
        first, to that moment (and the slot is filled). The arrivals end once nothing is in flight
        and no idle client comes online again (never without a trace).
        """
        while True:
            while ids := self.startable():
                fill(ids)
            wake, free = self.wake(), len(self.timeline) < self.slots
            if not self.timeline and wake is None:
                return
            if wake is not None and (not self.timeline or wake < self.timeline.first().finish_s):
                self._advance(wake, free)
                continue
            job = self.timeline.next()
            self._advance(job.finish_s, free)
            yield job

    def _advance(self, t: float, free: bool) -> None:
        if free:
            self.waited_s += t - self.now
        self.now = t

    def take_waited(self) -> float:
        """The virtual time a slot stood free since the last call (a server version's ``waited_s``)."""
        waited, self.waited_s = self.waited_s, 0.0
        return waited
