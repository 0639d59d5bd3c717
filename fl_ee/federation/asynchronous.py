"""The asynchronous server loop (``simulation.mode = "async"``): FedBuff on the virtual clock.

The server keeps ``simulation.concurrency`` clients training (:class:`sims.asynchrony.Schedule`).
Each starts from the server's current version when a slot frees, at that virtual time,
and arrives after its simulated round time; every ``simulation.buffer_size`` arrivals
make a new server version (:meth:`~strategies.DepthAwareStrategy.aggregate_buffer`: each
update's change from the version its client started at, weighted by its staleness). A
drop-out, an error or a refused update is an arrival that brings nothing; a version made
of such arrivals alone keeps the model (and is *bad* where an update was non-finite).
Under ``simulation.availability_trace`` a slot is filled only by a client online then (it
waits on the virtual clock for one to come online), and a client that goes offline before
it finishes drops at that moment, freeing its slot; once nothing is in flight and no client
comes online again, the remaining versions aggregate nothing.

Real execution follows the virtual clock: a client's message goes out
(:meth:`~fl_ee.wire.exchange.Exchange.post`) as soon as it starts, so up to ``concurrency``
train at once, and arrivals are taken in virtual-time order
(:meth:`~fl_ee.wire.exchange.Exchange.reply_of`), never in the order the replies come in,
so a seed gives the same run. Before an evaluation every message in flight is waited for,
so clients in flight are evaluated with the state their training left (always, whatever
the real timing); so before a checkpoint, whose :meth:`AsyncServer.state_dict` keeps their
replies for a resumed run. A message's ``server_round`` is the version its client trains toward
(its learning rate, distillation ramp and ``ic-only`` phase follow the versions).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fl_ee.core.config import Config
from fl_ee.core.errors import UserError, warn
from fl_ee.federation.faults import (
    StrategyFault,
    aggregate_problem,
    all_lost,
    error_line,
    is_non_finite,
    update_problem,
)
from fl_ee.results.observers import LoopState
from fl_ee.wire.exchange import Exchange
from fl_ee.wire.protocol import ARRAYS, METRICS, TrainReply, instructions_of, payload_of, with_instructions
from sims.asynchrony import Job, Schedule, Timeline, staleness_weight
from sims.clock import FAILED, OK, REJECTED, UNAVAILABLE, ClientTime
from sims.emulator import DeviceEmulator, Run
from strategies import ClientInfo, DepthAwareStrategy
from strategies.base import Feedback, to_numpy, to_record

# a version's step: (version, its instructions, the global arrays, its train record, whether it was bad)
Step = tuple[int, ConfigRecord, ArrayRecord, dict[str, Any], bool]


def async_problem(strategy: DepthAwareStrategy) -> str | None:
    """Why ``strategy`` cannot run asynchronously, or ``None``.

    It needs per-tensor rules (:meth:`~strategies.DepthAwareStrategy.aggregate_tensor`) or
    its own :meth:`~strategies.DepthAwareStrategy.aggregate_buffer`; a strategy that
    overrides ``aggregate_train`` or ``configure_train`` (rules for a whole round) must
    define ``aggregate_buffer`` too. FedNova normalises a whole round's steps.
    """
    cls, name = type(strategy), type(strategy).__name__
    if cls.aggregate_buffer is DepthAwareStrategy.aggregate_buffer:
        for method in ("aggregate_train", "configure_train"):
            if getattr(cls, method) is not getattr(DepthAwareStrategy, method):
                return (f"strategy {name} overrides {method} (a rule for whole rounds) and defines no "
                        "aggregate_buffer, so it cannot run asynchronously; use depthfl, exclusive, fedadam or fedyogi")
    if strategy.fednova:
        return "fednova normalises a whole round's local steps: not with simulation.mode = async"
    return None


def check_async(strategy: DepthAwareStrategy) -> None:
    """:func:`async_problem` as a one-line :class:`~fl_ee.core.errors.UserError`."""
    if problem := async_problem(strategy):
        raise UserError(problem, key="simulation.mode")


@dataclasses.dataclass(frozen=True)
class _Start:
    """A job as started: its client, its time, the share of it that runs, and why it drops (where it does)."""

    client: ClientInfo
    time: ClientTime
    done: float
    dropped: str = ""


@dataclasses.dataclass
class _Arrival:
    """A job that arrived: its client, its time, its outcome, and the reply it brought (for ``ok``)."""

    job: Job
    client: ClientInfo
    time: ClientTime
    outcome: str
    done: float = 1.0
    reply: Message | None = None
    reason: str = ""


class AsyncServer:
    """The asynchronous loop's state between versions: who is in flight, the buffer, the versions they started at."""

    def __init__(self, cfg: Config, exchange: Exchange, strategy: DepthAwareStrategy, emulator: DeviceEmulator,
                 arrays: ArrayRecord, instructions: Callable[[int], ConfigRecord]) -> None:
        self.cfg, self.exchange, self.strategy, self.emulator = cfg, exchange, strategy, emulator
        self.instructions = instructions
        self.pool = sorted(strategy.train_pool(), key=lambda c: c.client_id)
        self.roster = {c.client_id: c for c in self.pool}
        self.schedule = Schedule(min(cfg.simulation.concurrency, len(self.pool)), list(self.roster), emulator.trace)
        self.arrivals = self.schedule.arrivals(self._start_one)  # started by the first version
        self.version = 0
        self.arrays = arrays
        self.starts = {0: to_numpy(arrays)}  # the versions clients in flight (or buffered) started at
        self.started: dict[int, _Start] = {}  # job seq -> its client, time, share run and why it drops
        self.unavailable: list[Run] = []  # drawn offline since the last version
        self.draws = 0  # clients drawn so far (offline ones too): seeds each draw
        self.replies: dict[int, Message | str] = {}  # job seq -> its reply (or error) taken early, for a checkpoint
        self.ended = False  # no client comes online again (said once)

    @property
    def now(self) -> float:
        """The server's virtual time."""
        return self.schedule.now

    def _start_one(self, ids: list[int]) -> None:
        """Fill a free slot at the current virtual time: draw one of ``ids``; it runs unless it is offline."""
        idle = [self.roster[c] for c in ids]
        for _ in range(100 * len(self.pool)):
            draw, self.draws = self.draws, self.draws + 1
            client = self.strategy.selection.select(draw, idle, 1)[0]
            time, presence = self.emulator.dispatch(client, self.version + 1, draw, self.now)
            if presence.available:
                break
            self.unavailable.append(Run(client, UNAVAILABLE, time, 0.0))
        else:
            raise UserError(f"no client came online in {100 * len(self.pool)} draws", key="tiers")
        done = presence.fail_at if presence.fails else 1.0  # a drop-out runs until it drops, and sends nothing
        finish = presence.offline_s if presence.offline_s < math.inf else self.now + time.total_s * done
        job = self.schedule.start(client.client_id, self.version, finish)
        reason = presence.reason or ("dropped out" if presence.fails else "")
        self.started[job.seq] = _Start(client, time, done, reason)
        if presence.fails:
            return
        config = self.instructions(self.version + 1)
        message = self.strategy.messages([client], self.arrays, config, MessageType.TRAIN)[0]
        if self.cfg.simulation.pace:
            pace_s = time.total_s * self.cfg.simulation.time_scale
            with_instructions(message, dataclasses.replace(instructions_of(message), pace_s=pace_s))
        self.exchange.post(message)

    def _arrive(self, job: Job) -> _Arrival:
        """The arrival of ``job`` (just taken off the clock), its reply taken from the exchange and checked."""
        start = self.started.pop(job.seq)
        client, time = start.client, start.time
        if start.done < 1:
            return _Arrival(job, client, time, FAILED, start.done, reason=start.dropped)
        reply = self.replies.pop(job.seq) if job.seq in self.replies else self.exchange.reply_of(client.node_id)
        if isinstance(reply, str):  # an error reply, restored from a checkpoint
            return _Arrival(job, client, time, FAILED, reason=reply)
        if reply.has_error():
            return _Arrival(job, client, time, FAILED, reply=reply, reason=error_line(reply.error.reason or ""))
        sent = to_numpy(reply.content.array_records[ARRAYS])
        problem = update_problem(self.emulator.update_of(client, self.starts[job.version], self.version + 1), sent)
        if problem is not None:
            return _Arrival(job, client, time, REJECTED, reply=reply, reason=problem)
        self.strategy.selection.feedback(self.version + 1, [Feedback(
            client.client_id, payload_of(reply, TrainReply).num_examples, payload_of(reply, TrainReply).train_loss,
            time.total_s)])
        return _Arrival(job, client, time, OK, reply=reply)

    def versions(self, state: LoopState, last: int, checkpoint_every: int = 0) -> Iterator[Step]:
        """Run until server version ``last``; yield each version as it is made.

        Where a checkpoint follows the version (every ``checkpoint_every``, and the last; 0:
        none), ``state.async_state`` is the server's :meth:`state_dict` first.
        """
        sim = self.cfg.simulation
        while self.version < last:
            arrivals = [self._arrive(job) for job in itertools.islice(self.arrivals, sim.buffer_size)]
            if len(arrivals) < sim.buffer_size:
                self._say_over(last)
            step = self._aggregate(arrivals)
            if checkpoint_every and (self.version % checkpoint_every == 0 or self.version == last):
                state.async_state = self.state_dict()
            yield step

    def _say_over(self, last: int) -> None:
        """Warn, once, that no client comes online again (availability trace), so the versions left are empty."""
        if not self.ended:
            self.ended = True
            later = f", and versions {self.version + 2}-{last} nothing" if self.version + 1 < last else ""
            warn(f"no client is online after {self.now:g} s of virtual time (simulation.availability_trace): "
                 f"server version {self.version + 1} aggregates what had arrived{later}")

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on as this one: the clock, the clients in flight and their replies.

        Taken right after a version is made (no buffered arrival, no offline draw pending):
        every client in flight is waited for, so its reply (arrays and metrics, or its error)
        is saved with the versions they started from (``start/<version>/<key>``,
        ``reply/<seq>/<key>``); each client's own state is then the one its files hold
        (:mod:`fl_ee.federation.clientstate`). JSON values and NumPy arrays, as a strategy's.
        """
        jobs = sorted(self.schedule.timeline.jobs(), key=lambda j: j.seq)
        for job in jobs:
            client, done = self.started[job.seq].client, self.started[job.seq].done
            if done == 1 and job.seq not in self.replies:
                reply = self.exchange.reply_of(client.node_id)
                self.replies[job.seq] = error_line(reply.error.reason or "") if reply.has_error() else reply
        out: dict[str, Any] = {
            "version": self.version, "now": self.now, "draws": self.draws, "started": self.schedule.timeline.started,
            "jobs": [[j.finish_s, j.seq, j.client_id, j.version, j.start_s, self.started[j.seq].done] for j in jobs],
            "dropped": {str(j.seq): self.started[j.seq].dropped for j in jobs if self.started[j.seq].done < 1},
            "errors": {str(seq): r for seq, r in self.replies.items() if isinstance(r, str)},
            "metrics": {str(seq): dict(r.content.metric_records[METRICS]) for seq, r in self.replies.items()
                        if not isinstance(r, str)},
        }
        for version, arrays in self.starts.items():
            out |= {f"start/{version}/{key}": value for key, value in arrays.items()}
        for seq, sent in self.replies.items():
            if not isinstance(sent, str):
                out |= {f"reply/{seq}/{k}": v for k, v in to_numpy(sent.content.array_records[ARRAYS]).items()}
        return out

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Go on from :meth:`state_dict` (the global arrays are the checkpoint's own)."""
        self.version, self.schedule.now, self.draws = int(saved["version"]), float(saved["now"]), int(saved["draws"])
        roster = self.roster
        self.schedule.timeline = Timeline.of(
            [Job(f, int(seq), int(cid), int(v), s) for f, seq, cid, v, s, _ in saved["jobs"]], int(saved["started"]))
        dropped = saved.get("dropped", {})  # checkpoints before availability traces: failure_rate's drops only
        self.started = {int(seq): _Start(roster[int(cid)], self.emulator.times_in(int(v) + 1)[int(cid)], float(done),
                                         dropped.get(str(seq), "dropped out" if done < 1 else ""))
                        for _, seq, cid, v, _, done in saved["jobs"]}
        parts: dict[str, dict[str, dict[str, np.ndarray]]] = {"start": {}, "reply": {}}
        for name, value in saved.items():
            kind, _, rest = name.partition("/")
            if kind in parts:
                owner, _, key = rest.partition("/")
                parts[kind].setdefault(owner, {})[key] = value
        self.starts = {int(v): arrays for v, arrays in parts["start"].items()}
        self.replies = {int(seq): reason for seq, reason in saved["errors"].items()}
        for seq, arrays in parts["reply"].items():
            client = roster[next(int(cid) for _, s, cid, *_ in saved["jobs"] if s == int(seq))]
            content = RecordDict({METRICS: MetricRecord(saved["metrics"][seq]), ARRAYS: to_record(arrays)})
            message = Message(content, dst_node_id=client.node_id, message_type=MessageType.TRAIN)
            message.metadata.group_id = str(client.client_id)
            self.replies[int(seq)] = message

    def _aggregate(self, arrivals: Sequence[_Arrival]) -> Step:
        """Make the next version from a full buffer; its record lists every arrival (and every offline draw)."""
        sim, rnd = self.cfg.simulation, self.version + 1
        counted = [a for a in arrivals if a.outcome == OK]
        if arrivals and all(a.outcome == FAILED and a.reply is not None for a in arrivals) and not all_lost(
                [a.reply.error.reason for a in arrivals if a.reply is not None]):
            raise RuntimeError(f"every client failed to train in version {rnd}: {arrivals[0].reason}")
        staleness = {a.job.seq: self.version - a.job.version for a in counted}
        current = to_numpy(self.arrays)
        try:
            new_arrays, metrics = self.strategy.aggregate_buffer(
                rnd, [a.reply for a in counted if a.reply is not None], [self.starts[a.job.version] for a in counted],
                [sim.server_lr * staleness_weight(sim.staleness, staleness[a.job.seq], sim.staleness_a,
                                                  sim.staleness_b) for a in counted], current)
        except Exception as exc:
            raise StrategyFault(type(self.strategy).__name__, "aggregate_buffer", rnd,
                                f"{type(exc).__name__}: {exc}") from exc
        record: dict[str, Any] = {"metrics": dict(metrics or {})}
        bad = not counted and any(is_non_finite(a.reason) for a in arrivals if a.outcome == REJECTED)
        if new_arrays is not None:
            broken, non_finite = aggregate_problem(current, to_numpy(new_arrays))
            if broken:
                raise StrategyFault(type(self.strategy).__name__, "aggregate_buffer", rnd,
                                    f"returned a bad global state: {broken}")
            if non_finite:
                record["aggregate_rejected"] = non_finite
                new_arrays, bad = None, True
        previous_s = self.emulator.virtual_time_s
        self.emulator.virtual_time_s, self.emulator.waited_s = self.now, self.schedule.take_waited()
        runs = [*self.unavailable, *(Run(a.client, a.outcome, a.time, a.done, _extra(a, staleness)) for a in arrivals)]
        self.unavailable = []
        record["clock"] = self.emulator.clock_record(runs, self.now - previous_s)
        record["errors"] = {a.client.client_id: a.reply.error.reason for a in arrivals
                            if a.reply is not None and a.reply.has_error()}
        self.version = rnd
        if new_arrays is not None:
            self.arrays = new_arrays
        self.starts[rnd] = to_numpy(self.arrays)
        in_flight = {job.version for job in self.schedule.timeline.jobs()}  # the others' starts are no longer needed
        self.starts = {v: s for v, s in self.starts.items() if v in in_flight or v == rnd}
        return rnd, self.instructions(rnd), self.arrays, record, bad


def _extra(arrival: _Arrival, staleness: dict[int, int]) -> dict[str, Any]:
    """An arrival's fields in its version's record beside the usual ones: why it failed, or its staleness."""
    job = arrival.job
    extra: dict[str, Any] = {"started_s": job.start_s, "from_version": job.version}
    if arrival.reason:
        extra["reason"] = arrival.reason
    if job.seq in staleness:
        extra["staleness"] = staleness[job.seq]
    return extra


