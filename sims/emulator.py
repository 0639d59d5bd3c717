"""Device emulation for a run: every client's simulated time, presence, and round outcomes.

Glue between the pure cost model (``sims/clock.py``) and the server loop: it knows each
client's tier profile, data size and submodel cost (the FLOPs and bytes of its depth and
width), and turns a round's sampled clients into who is sent work and, once replies are
in, who counted, who was late, and how long the round took on the virtual clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fl_ee.core.config import Config
from fl_ee.learning.algorithm import ClientAlgorithm, build_algorithm, round_flops, sent_state
from fl_ee.learning.scheme import backbone_frozen, returned_state
from fl_ee.learning.training import local_steps
from fl_ee.models import (
    EarlyExitNet,
    Flops,
    ModelSpec,
    narrow_state,
    state_bytes,
    submodel_flops,
    submodel_shapes,
    training_flops,
)
from sims.clock import (
    FAILED,
    OK,
    OUTCOMES,
    REJECTED,
    UNAVAILABLE,
    ClientTime,
    Power,
    Presence,
    client_time,
    energy,
    presence,
    settle,
    speed_factors,
)
from sims.traces import load_availability, load_capacity, next_online, online_until
from strategies import ClientInfo
from strategies.fjord import client_dropout

Submodel = tuple[int, float]  # a client's (depth, width ratio)

T = TypeVar("T")


def returned_part(
    spec: ModelSpec, state: Mapping[str, T], depth: int, width: float, frozen: bool,
    algorithm: ClientAlgorithm | None = None,
) -> dict[str, T]:
    """What a (depth, width) client sends back of ``state``: the corners of its slice, only its exits when ``frozen``.

    With its client ``algorithm``, only what that sends of them (:func:`~fl_ee.learning.algorithm.sent_state`).
    """
    held = narrow_state(state, submodel_shapes(spec, depth, width))
    return sent_state(algorithm, held, depth, frozen) if algorithm else returned_state(held, depth, frozen)


def submodel_bytes(
    model: EarlyExitNet, submodels: Iterable[Submodel], frozen: bool = False, algorithm: ClientAlgorithm | None = None
) -> dict[Submodel, int]:
    """Bytes a client of each (depth, width) returns in a round: its slice, or only its exits when ``frozen``.

    With its client ``algorithm``, only what that sends of it
    (:func:`~fl_ee.learning.algorithm.sent_state`: FedPer's backbone, LG-FedAvg's exits).
    It always receives its whole slice (it needs the backbone to train its exits).
    """
    state = model.state_dict()
    return {(d, w): state_bytes(returned_part(model.spec, state, d, w, frozen, algorithm)) for d, w in set(submodels)}


def client_flops(
    cfg: Config, flops: Flops, depth: int, num_train: int, frozen: bool = False,
    algorithm: ClientAlgorithm | None = None, shared_forward: float | None = None,
) -> float:
    """A client's training FLOPs in one round, as the ClientApp spends them.

    ``flops`` are those of the client's submodel (its width's). Shared step: ``3 x forward
    x samples x local_epochs`` end to end, ``forward`` being one sample's forward FLOPs
    through the submodel's exits, or ``shared_forward`` where its steps train other widths
    (FjORD: :func:`shared_step_forward`); with a ``frozen`` backbone (``ic-only``), one
    forward pass of the backbone and ``3 x heads`` per sample and epoch. The client
    ``algorithm`` adds its own work
    (:meth:`~fl_ee.learning.algorithm.ClientAlgorithm.train_flops`: personal heads, a
    teacher's pass; fine-tuning happens before evaluation, which the clock does not time).
    FedProx's and FedDyn's terms (about 10 FLOPs per parameter and SGD step) are left out,
    as is the optimiser's update; a client sends what its algorithm sends of its shared slice,
    FedDyn's too.
    """
    backbone, heads, n = sum(flops.stages[:depth]), sum(flops.exits[:depth]), num_train
    if frozen:
        work = backbone * n + training_flops(heads, n, cfg.training.local_epochs)
    else:
        forward = flops.exit_costs()[depth - 1] if shared_forward is None else shared_forward
        work = training_flops(forward, n, cfg.training.local_epochs)
    return work + round_flops(algorithm or build_algorithm(cfg), flops, depth, num_train, frozen)


def shared_step_forward(cfg: Config, spec: ModelSpec, depth: int, width: float) -> float | None:
    """One sample's expected forward FLOPs in a shared step of a (depth, width) client whose steps draw widths.

    Under FjORD's ordered dropout (:func:`strategies.fjord.client_dropout`): the mean over
    the widths it draws from, plus its own width's where that teaches; ``None`` otherwise.
    """
    plan = client_dropout(cfg, width)
    if plan is None:
        return None
    return plan.forward_flops(lambda w: submodel_flops(spec, None, w).exit_costs()[depth - 1])


def client_work(
    cfg: Config, spec: ModelSpec, clients: Sequence[ClientInfo], frozen: bool = False,
    algorithm: ClientAlgorithm | None = None,
) -> dict[int, float]:
    """Each client's training FLOPs in one round (:func:`client_flops` of its submodel), by client id."""
    algorithm = algorithm or build_algorithm(cfg)
    shared = {key: shared_step_forward(cfg, spec, *key) for key in {(c.depth, c.width) for c in clients}}
    return {c.client_id: client_flops(cfg, submodel_flops(spec, None, c.width), c.depth, c.num_train, frozen,
                                      algorithm, shared[c.depth, c.width]) for c in clients}


def client_times(
    cfg: Config, model: EarlyExitNet, clients: Sequence[ClientInfo], frozen: bool = False
) -> dict[int, ClientTime]:
    """Each client's simulated round time (and energy) from its tier profile, data size and submodel.

    A client of ``simulation.capacity_trace`` takes the figures the trace gives it in place of its tier's.

    ``frozen``: in a round of ``ic-only`` that trains the exits alone.
    """
    tiers = {t.name: t for t in cfg.tiers}
    factors = speed_factors([tiers[c.tier].speed_sigma for c in clients], cfg.seed)
    capacity = load_capacity(cfg.simulation.capacity_trace) if cfg.simulation.capacity_trace else {}
    submodels = [(c.depth, c.width) for c in clients]
    algorithm = build_algorithm(cfg)
    down, up = submodel_bytes(model, submodels), submodel_bytes(model, submodels, frozen, algorithm)
    work = client_work(cfg, model.spec, clients, frozen, algorithm)
    times = {}
    for client, factor, key in zip(clients, factors, submodels):
        tier = tiers[client.tier]
        speeds = {"compute_gflops": tier.compute_gflops * factor, "download_mbps": tier.download_mbps,
                  "upload_mbps": tier.upload_mbps, **capacity.get(client.client_id, {})}
        t = client_time(down[key], up[key], work[client.client_id], **speeds)
        power = Power(tier.training_w, tier.idle_w, tier.radio_up_j_per_mb, tier.radio_down_j_per_mb)
        times[client.client_id] = dataclasses.replace(t, energy_j=energy(t, down[key], up[key], power))
    return times


@dataclass
class RoundClock:
    """One training round on the virtual clock."""

    sampled: list[ClientInfo]
    presence: dict[int, Presence]
    times: Mapping[int, ClientTime]  # every client's simulated time in this round
    outcomes: dict[int, str] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)  # why a client failed or was rejected
    round_time_s: float = 0.0
    steps: dict[int, int] = field(default_factory=dict)  # partial work: the local steps a client may take

    def runs(self, client: ClientInfo) -> bool:
        """Whether the client is online and does not drop out, so it is sent work."""
        p = self.presence[client.client_id]
        return p.available and not p.fails

    def reject(self, client: ClientInfo, reason: str) -> None:
        """The server refused this client's update (after settling): it counts as wasted work."""
        self.outcomes[client.client_id] = REJECTED
        self.reasons[client.client_id] = reason


class DeviceEmulator:
    """Simulated devices of one run; the virtual clock advances with every settled round."""

    def __init__(self, cfg: Config, model: EarlyExitNet, clients: Sequence[ClientInfo]) -> None:
        self.cfg = cfg
        self.algorithm = build_algorithm(cfg)
        self.spec = model.spec
        self.tiers = {t.name: t for t in cfg.tiers}
        self.times = client_times(cfg, model, clients)  # rounds that train the backbone
        self.frozen_times = client_times(cfg, model, clients, frozen=True) \
            if cfg.training.scheme == "ic-only" else self.times
        self.virtual_time_s = 0.0
        trace = cfg.simulation.availability_trace
        self.trace = load_availability(trace) if trace else None
        self.waited_s = 0.0  # how long the last round waited for a client to come online

    def online(self, pool: Iterable[ClientInfo]) -> frozenset[int] | None:
        """The clients of ``pool`` online when the next round starts (``None``: no trace, everyone may be sampled).

        Where none is online now, the clock first waits until one comes online.
        """
        if self.trace is None:
            return None
        ids = [c.client_id for c in pool]
        start = next_online(self.trace, ids, self.virtual_time_s)
        self.waited_s = 0.0 if start is None else start - self.virtual_time_s
        self.virtual_time_s += self.waited_s
        return frozenset(c for c in ids if online_until(self.trace.get(c), self.virtual_time_s) is not None)

    def _presence(self, client: ClientInfo, time: ClientTime, server_round: int, start: float) -> Presence:
        """Whether ``client`` is online this round and whether it drops: drawn, or from the trace where one is set.

        ``time`` is its time this round, from virtual time ``start``: the trace drops it if it
        goes offline before that is up.
        """
        tier = self.tiers[client.tier]
        if self.trace is None:
            return presence(client.client_id, tier.availability, tier.failure_rate, self.cfg.seed, server_round)
        until = online_until(self.trace.get(client.client_id), start)
        if until is None:
            return Presence(False, False, 0.0, "offline at the round's start (availability trace)")
        total = time.total_s
        if start + total > until:
            return Presence(True, True, (until - start) / total,
                            f"went offline at {until:g} s, {until - start:.4g} s into its {total:.4g} s round "
                            "(availability trace)", until)
        return presence(client.client_id, 1.0, tier.failure_rate, self.cfg.seed, server_round)

    def times_in(self, server_round: int) -> Mapping[int, ClientTime]:
        """Every client's simulated time in ``server_round`` (``ic-only`` rounds differ once the backbone is frozen)."""
        return self.frozen_times if backbone_frozen(self.cfg.training, server_round) else self.times

    def update_of(self, client: ClientInfo, state: Mapping[str, T], server_round: int) -> dict[str, T]:
        """What a client sends back of ``state`` in ``server_round``: its client algorithm's part of its slice."""
        frozen = backbone_frozen(self.cfg.training, server_round)
        return returned_part(self.spec, state, client.depth, client.width, frozen, self.algorithm)

    def begin(self, server_round: int, sampled: Iterable[ClientInfo]) -> RoundClock:
        """Draw who of the sampled clients is online and who will drop out this round (or read it from the trace).

        Under ``simulation.partial_work``, the clients too slow for all their local steps get fewer
        (:meth:`_partial`): ``steps`` of the clock.
        """
        sampled = list(sampled)
        times, steps = self.times_in(server_round), {}
        if self.cfg.simulation.partial_work:
            partial = {c.client_id: cut for c in sampled if (cut := self._partial(c, times[c.client_id]))}
            times = {**times, **{cid: t for cid, (_, t) in partial.items()}}
            steps = {cid: k for cid, (k, _) in partial.items()}
        draws = {c.client_id: self._presence(c, times[c.client_id], server_round, self.virtual_time_s)
                 for c in sampled}
        return RoundClock(sampled, draws, times, steps=steps)

    def _partial(self, client: ClientInfo, time: ClientTime) -> tuple[int, ClientTime] | None:
        """Partial work: the local steps that fit before the deadline and its time doing only those.

        ``None`` where all its steps fit, or none does (it is late, as without partial work).
        Download and upload take their whole time; the compute (and its energy at
        ``training_w``) is cut in proportion to the steps it takes.
        """
        total = local_steps(client.num_train, self.cfg.training)
        room = self.cfg.simulation.deadline_s - time.download_s - time.upload_s
        k = math.floor(room / time.compute_s * total) if time.compute_s > 0 else total
        while k > 0 and time.download_s + time.compute_s * k / total + time.upload_s > self.cfg.simulation.deadline_s:
            k -= 1  # a rounding error in the floor above
        if not 0 < k < total:
            return None
        cut = time.compute_s * (1 - k / total)
        return k, dataclasses.replace(time, compute_s=time.compute_s - cut,
                                      energy_j=time.energy_j - self.tiers[client.tier].training_w * cut)

    def pace_seconds(self, clock: RoundClock, client: ClientInfo) -> float:
        """Real seconds a client sleeps: its simulated time x ``time_scale`` when paced, else 0."""
        sim = self.cfg.simulation
        return clock.times[client.client_id].total_s * sim.time_scale if sim.pace else 0.0

    def settle(
        self, clock: RoundClock, finished: Iterable[ClientInfo], errored: Mapping[ClientInfo, str], keep: int
    ) -> None:
        """Apply the straggler policy to the clients that finished, and advance the clock.

        ``errored`` maps the clients whose ClientApp raised to the error they reported.
        """
        sim = self.cfg.simulation
        completion = {c.client_id: clock.times[c.client_id].total_s for c in finished}
        clock.outcomes, clock.round_time_s = settle(completion, sim.straggler_policy, sim.deadline_s, keep)
        for c in clock.sampled:
            p = clock.presence[c.client_id]
            if not p.available:
                clock.outcomes[c.client_id] = UNAVAILABLE
            elif p.fails:
                clock.outcomes[c.client_id] = FAILED
            if p.reason:
                clock.reasons[c.client_id] = p.reason
        for c, reason in errored.items():  # the client crashed for real: its update is lost like a dropout's
            clock.outcomes[c.client_id] = FAILED
            clock.reasons[c.client_id] = reason
        self.virtual_time_s += clock.round_time_s

    def record(self, clock: RoundClock) -> dict[str, Any]:
        """The round's ``clock`` entry in ``rounds.jsonl``."""
        entries = []
        for c in clock.sampled:
            p = clock.presence[c.client_id]
            extra: dict[str, Any] = {}
            if c.client_id in clock.reasons:
                extra["reason"] = clock.reasons[c.client_id]
            if c.client_id in clock.steps:
                extra["local_steps"] = clock.steps[c.client_id]
            entries.append(Run(c, clock.outcomes[c.client_id], clock.times[c.client_id],
                               p.fail_at if p.fails else 1.0, extra))
        return self.clock_record(entries, clock.round_time_s)

    def dispatch(
        self, client: ClientInfo, server_round: int, draw: int, start_s: float
    ) -> tuple[ClientTime, Presence]:
        """An asynchronous start at virtual time ``start_s``: the client's time toward ``server_round``, its presence.

        Under a trace the presence says whether it goes offline before it finishes. Each start
        draws its presence afresh, seeded by ``draw`` (the how-many-th start it is) and the client.
        """
        time = self.times_in(server_round)[client.client_id]
        return time, self._presence(client, time, draw, start_s)

    def clock_record(self, runs: Sequence[Run], round_time_s: float) -> dict[str, Any]:
        """The ``clock`` entry in ``rounds.jsonl`` of a round (or an async server version) and its clients' ``runs``."""
        clients, wasted = [], 0.0
        by_tier = {t: dict.fromkeys(("sampled", *OUTCOMES), 0) for t in self.tiers}
        energy_by_tier = dict.fromkeys(self.tiers, 0.0)
        for run in runs:
            c, outcome, t, done = run.client, run.outcome, run.time, run.done
            if outcome == UNAVAILABLE:
                done = 0.0
            time_s = None if outcome == UNAVAILABLE else t.total_s * done
            if outcome not in (OK, UNAVAILABLE):  # trained (or started to) for nothing
                wasted += t.compute_s * done
            energy_by_tier[c.tier] += t.energy_j * done
            clients.append({"client_id": c.client_id, "tier": c.tier, "time_s": time_s, "outcome": outcome,
                            "energy_j": t.energy_j * done, **run.extra})
            by_tier[c.tier]["sampled"] += 1
            by_tier[c.tier][outcome] += 1
        waited = {"waited_s": self.waited_s} if self.trace is not None else {}
        return {
            **waited,
            "round_time_s": round_time_s,
            "virtual_time_s": self.virtual_time_s,
            "wasted_compute_s": wasted,
            "energy_j": sum(energy_by_tier.values()),
            "energy_by_tier_j": energy_by_tier,
            "clients": clients,
            "by_tier": by_tier,
        }


@dataclass(frozen=True)
class Run:
    """One client's run in a round's record: its outcome, its time, the share of it done, and extra fields."""

    client: ClientInfo
    outcome: str
    time: ClientTime
    done: float = 1.0  # the share of its time it ran (a drop-out's fail_at)
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. reason, local_steps, staleness
