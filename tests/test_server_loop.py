"""The server loop's pieces (``fl_ee.federation.server``) one at a time, through the in-process grid, with
numbers checked by hand: the clients, a training round under each straggler policy, a federated
evaluation, and ``build_summary`` on hand-made results.

Virtual times come from the run's :class:`~sims.emulator.DeviceEmulator` (``emulator.times``,
the cost model's per-client ``ClientTime``); what is checked here is what the loop makes of
them: who is sent work, each client's outcome, the round's length and the virtual clock.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message
from flwr.clientapp import ClientApp
from test_deployment import curve_reply

from fl_ee.core.config import Config, config_from_dict, config_to_json, load_config
from fl_ee.core.seeding import Stream
from fl_ee.data.datasets import load_dataset, run_splits
from fl_ee.deployment.policies import CONFIDENCE_GRID
from fl_ee.federation.preflight import preflight
from fl_ee.federation.server import evaluate_round, initial_model, make_clients, train_round
from fl_ee.results.summary import Evaluation, build_summary
from fl_ee.wire.exchange import Exchange, as_client
from fl_ee.wire.protocol import ARRAYS, EvaluateReply, Instructions, TrainReply, reply
from inprocess import InProcessGrid
from sims.clock import presence
from sims.emulator import DeviceEmulator
from sims.tiers import assign_tiers
from strategies import ClientInfo, DepthAwareStrategy, build_strategy
from strategies.base import to_numpy, to_record

NUM_CLIENTS = 6
POOL = 2  # simulated nodes
# two tiers two orders of magnitude apart end to end (as in the `stragglers` preset, whose 8 s
# deadline is kept): a slow client takes seconds to tens of seconds, a fast one well under one
SLOW = {"name": "slow", "share": 0.5, "depth": 2, "compute_gflops": 0.02, "download_mbps": 0.5, "upload_mbps": 0.5}
FAST = {"name": "fast", "share": 0.5, "depth": 4, "compute_gflops": 2.0, "download_mbps": 50.0, "upload_mbps": 50.0}


def make_config(policy: str = "wait", fraction_train: float = 0.5, tiers: list[dict] | None = None,
                **overrides) -> Config:
    """The `stragglers` preset on 6 digits clients, two tiers, through the preflight (as ``run_inprocess``)."""
    values = {"data.num_clients": NUM_CLIENTS, "tiers": tiers or [SLOW, FAST],
              "simulation.straggler_policy": policy, "strategy.fraction_train": fraction_train, **overrides}
    return preflight(load_config("stragglers", values))


@dataclass
class Loop:
    """What ``run_federation`` sets up before its first round."""

    cfg: Config
    grid: InProcessGrid
    exchange: Exchange
    strategy: DepthAwareStrategy
    emulator: DeviceEmulator
    clients: list[ClientInfo]
    arrays: ArrayRecord
    text: str

    def config(self, rnd: int):
        return Instructions(self.text, server_round=rnd).to_record()

    def train(self, rnd: int = 1):
        new, record, bad = train_round(self.exchange, self.strategy, self.emulator, rnd, self.arrays, self.config(rnd))
        assert not bad  # these rounds all produce finite updates
        return new, record

    def total(self, client_id: int) -> float:
        return self.emulator.times[client_id].total_s

    def compute(self, client_id: int) -> float:
        return self.emulator.times[client_id].compute_s


@contextmanager
def loop(cfg: Config, app: ClientApp | None = None, **grid_options):
    """The grid, strategy, emulator and initial arrays, as ``run_federation`` builds them."""
    with InProcessGrid(POOL, app, **grid_options) as grid:  # fewer nodes than clients, as in a run
        model = initial_model(cfg, load_dataset(cfg.data))
        strategy = build_strategy(cfg)
        text = config_to_json(cfg)
        clients = make_clients(cfg)
        strategy.register_clients(clients)
        yield Loop(cfg, grid, Exchange(grid, cfg.data.num_clients), strategy, DeviceEmulator(cfg, model, clients),
                   clients, ArrayRecord(model.state_dict()), text)


def sampled_ids(lp: Loop, rnd: int) -> list[int]:
    """Who the strategy samples for training in ``rnd`` (drawn again, independently of the loop)."""
    s = lp.strategy
    return [c.client_id for c in s.sample(rnd, s.fraction_train, Stream.SAMPLE_TRAIN, s.train_pool(), s.overcommit)]


def by_id(record: dict) -> dict[int, dict]:
    return {c["client_id"]: c for c in record["clock"]["clients"]}


def constant_app(train_raises: set[int] = frozenset(), evaluate_raises: set[int] = frozenset()) -> ClientApp:
    """Training sets every received tensor to ``p + 1`` and reports ``10 * (p + 1)`` examples;
    evaluation returns an :func:`eval_reply` (``p`` the partition)."""
    app = ClientApp(mods=[as_client])

    @app.train()
    def train(msg: Message, context) -> Message:
        p = int(context.node_config["partition-id"])
        if p in train_raises:
            raise RuntimeError(f"client {p} ran out of memory")
        arrays = {k: np.full_like(v, p + 1.0) for k, v in to_numpy(msg.content[ARRAYS]).items()}
        return reply(msg, TrainReply(p, num_examples=10 * (p + 1), train_loss=float(p)), to_record(arrays))

    @app.evaluate()
    def evaluate(msg: Message, context) -> Message:
        p = int(context.node_config["partition-id"])
        if p in evaluate_raises:
            raise RuntimeError(f"client {p} cannot evaluate")
        return reply(msg, eval_reply(p))

    return app


def eval_reply(p: int) -> EvaluateReply:
    cfg = config_from_dict({"tiers": [SLOW, FAST]})  # the exit policy's grids of make_config()
    return curve_reply(cfg, p, 10 * (p + 1), ((p + 1) / 20, (p + 1) / 10), 1000.0, calib=lambda i: (0.5, 1.0),
                       test=lambda i: (0.5, 1.0), adaptive=(p + 1) / 20, expected=100.0 * (p + 1),
                       fractions=(0.25, 0.75))


# ----------------------------------------------------------------------------- the clients


def test_the_clients_tiers_depths_and_split_sizes_follow_the_seed_and_the_split():
    cfg = make_config()
    clients = make_clients(cfg)
    assert [c.client_id for c in clients] == [c.node_id for c in clients] == list(range(NUM_CLIENTS))
    tier_of = assign_tiers([0.5, 0.5], NUM_CLIENTS, cfg.seed)
    splits = run_splits(cfg)
    for c in clients:
        assert c.tier == ("slow", "fast")[tier_of[c.client_id]]
        assert c.depth == {"slow": 2, "fast": 4}[c.tier]
        assert (c.num_train, c.num_test) == (len(splits[c.client_id].train), len(splits[c.client_id].test))
    assert sum(c.tier == "slow" for c in clients) == 3  # shares 0.5/0.5 of 6


# ---------------------------------------------------------------- training: straggler policies


@pytest.mark.e2e
def test_wait_counts_everyone_and_the_slowest_sampled_client_sets_the_round_time():
    with loop(make_config("wait", 0.5)) as lp:  # k = round(0.5 * 6) = 3 sampled, no overcommit
        _, first = lp.train(1)
        _, second = lp.train(2)
        calls = lp.grid.calls["train"]
    for rnd, record in ((1, first), (2, second)):
        sampled = sampled_ids(lp, rnd)
        assert len(sampled) == 3 and sorted(by_id(record)) == sampled
        assert all(c["outcome"] == "ok" for c in record["clock"]["clients"])
        assert record["clock"]["round_time_s"] == pytest.approx(max(lp.total(c) for c in sampled))
        assert all(by_id(record)[c]["time_s"] == pytest.approx(lp.total(c)) for c in sampled)
        assert record["clock"]["wasted_compute_s"] == 0.0
        # every update counted: the real TrainReply's examples are the clients' train splits
        num_train = {c.client_id: c.num_train for c in lp.clients}
        assert record["metrics"]["num-examples"] == sum(num_train[c] for c in sampled)
    assert calls == 6  # 3 + 3: everyone sampled was sent work
    assert first["clock"]["virtual_time_s"] == pytest.approx(first["clock"]["round_time_s"])
    assert second["clock"]["virtual_time_s"] == pytest.approx(first["clock"]["round_time_s"]
                                                              + second["clock"]["round_time_s"])


@pytest.mark.e2e
def test_deadline_marks_late_exactly_the_clients_past_it_and_caps_the_round():
    cfg = make_config("deadline", 1.0)  # all 6 train; deadline_s = 8 from the preset
    deadline = cfg.simulation.deadline_s
    with loop(cfg) as lp:
        new, record = lp.train(1)
        calls = lp.grid.calls["train"]
    assert calls == NUM_CLIENTS and sorted(by_id(record)) == list(range(NUM_CLIENTS))
    totals = {c: lp.total(c) for c in range(NUM_CLIENTS)}
    late = {c for c, t in totals.items() if t > deadline}
    assert late and len(late) < NUM_CLIENTS  # the deadline splits this federation
    assert {c for c, r in by_id(record).items() if r["outcome"] == "late"} == late
    assert {c for c, r in by_id(record).items() if r["outcome"] == "ok"} == set(totals) - late
    assert record["clock"]["round_time_s"] == pytest.approx(min(deadline, max(totals.values())))
    assert record["clock"]["virtual_time_s"] == pytest.approx(record["clock"]["round_time_s"])
    assert record["clock"]["wasted_compute_s"] == pytest.approx(sum(lp.compute(c) for c in late))
    num_train = {c.client_id: c.num_train for c in lp.clients}
    assert record["metrics"]["num-examples"] == sum(num_train[c] for c in set(totals) - late)  # late not counted
    tiers = {c.client_id: c.tier for c in lp.clients}
    by_tier = record["clock"]["by_tier"]
    for t in ("slow", "fast"):
        assert by_tier[t]["sampled"] == 3
        assert by_tier[t]["late"] == sum(tiers[c] == t for c in late)


@pytest.mark.e2e
def test_overselect_samples_extra_and_keeps_the_k_fastest():
    cfg = make_config("overselect", 0.5)  # k = 3; overcommit 1.0 samples ceil(3 * 2) = 6
    with loop(cfg) as lp:
        _, record = lp.train(1)
        k = lp.strategy.train_quota()
        calls = lp.grid.calls["train"]
    assert k == 3
    sampled = sampled_ids(lp, 1)
    assert len(sampled) == math.ceil(k * (1 + cfg.simulation.overcommit)) == 6
    assert calls == 6 and sorted(by_id(record)) == sampled  # every sampled client trains
    fastest = sorted(sampled, key=lambda c: (lp.total(c), c))
    kept, dropped = set(fastest[:k]), set(fastest[k:])
    assert {c for c, r in by_id(record).items() if r["outcome"] == "ok"} == kept
    assert {c for c, r in by_id(record).items() if r["outcome"] == "late"} == dropped
    assert record["clock"]["round_time_s"] == pytest.approx(lp.total(fastest[k - 1]))  # the k-th fastest
    assert record["clock"]["wasted_compute_s"] == pytest.approx(sum(lp.compute(c) for c in dropped))
    num_train = {c.client_id: c.num_train for c in lp.clients}
    assert record["metrics"]["num-examples"] == sum(num_train[c] for c in kept)


def test_unavailable_and_dropping_clients_are_not_sent_work():
    tiers = [{**SLOW, "name": "off", "share": 0.34, "availability": 0.0},
             {**SLOW, "name": "flaky", "share": 0.33, "failure_rate": 1.0},
             {**FAST, "share": 0.33}]
    cfg = make_config("wait", 1.0, tiers)  # 2 clients per tier, all sampled
    with loop(cfg) as lp:
        _, record = lp.train(1)
        calls = lp.grid.calls["train"]
    tier = {c.client_id: c.tier for c in lp.clients}
    fast = [c for c in tier if tier[c] == "fast"]
    flaky = [c for c in tier if tier[c] == "flaky"]
    assert len(fast) == len(flaky) == 2
    assert calls == 2  # only the fast tier was sent work
    outcome = {"off": "unavailable", "flaky": "failed", "fast": "ok"}
    clients = by_id(record)
    assert {c: r["outcome"] for c, r in clients.items()} == {c: outcome[tier[c]] for c in tier}
    # a dropout stops part way (fail_at of its seeded presence draw); an offline client has no time
    fail_at = {c: presence(c, 1.0, 1.0, cfg.seed, 1).fail_at for c in flaky}
    assert all(0 < f < 1 for f in fail_at.values())
    for c in tier:
        expected = {"off": None, "flaky": lp.total(c) * fail_at.get(c, 0), "fast": lp.total(c)}[tier[c]]
        assert clients[c]["time_s"] == pytest.approx(expected)
    assert record["clock"]["round_time_s"] == pytest.approx(max(lp.total(c) for c in fast))
    assert record["clock"]["wasted_compute_s"] == pytest.approx(sum(lp.compute(c) * fail_at[c] for c in flaky))
    assert record["clock"]["by_tier"] == {
        "off": {"sampled": 2, "ok": 0, "late": 0, "unavailable": 2, "failed": 0, "rejected": 0},
        "flaky": {"sampled": 2, "ok": 0, "late": 0, "unavailable": 0, "failed": 2, "rejected": 0},
        "fast": {"sampled": 2, "ok": 2, "late": 0, "unavailable": 0, "failed": 0, "rejected": 0},
    }
    assert record["metrics"]["num-examples"] == sum(c.num_train for c in lp.clients if c.tier == "fast")


def test_only_ok_updates_reach_aggregation():
    """Deadline policy, constant updates: client c sends ``c + 1`` everywhere with ``10 (c + 1)``
    examples; late clients and one that crashes must not move the new global model."""
    cfg = make_config("deadline", 1.0)
    with loop(cfg, constant_app(train_raises={1})) as lp:
        new, record = lp.train(1)
        calls = lp.grid.calls["train"]
    assert calls == NUM_CLIENTS and list(record["errors"]) == [1] and "ran out of memory" in record["errors"][1]
    outcome = {c: r["outcome"] for c, r in by_id(record).items()}
    assert outcome[1] == "failed" and by_id(record)[1]["time_s"] == pytest.approx(lp.total(1))
    late = {c for c, o in outcome.items() if o == "late"}
    ok = {c for c, o in outcome.items() if o == "ok"}
    assert late and ok and ok | late | {1} == set(range(NUM_CLIENTS))
    assert record["clock"]["wasted_compute_s"] == pytest.approx(sum(lp.compute(c) for c in late | {1}))
    depth = {c.client_id: c.depth for c in lp.clients}
    assert record["metrics"]["num-examples"] == sum(10 * (c + 1) for c in ok)
    assert record["metrics"]["train-loss"] == pytest.approx(
        sum(10 * (c + 1) * c for c in ok) / sum(10 * (c + 1) for c in ok))
    before, after = to_numpy(lp.arrays), to_numpy(new)
    for key, value in after.items():
        stage = int(key.split(".")[1])  # stages.<i>... / exits.<i>...: held by clients deeper than i
        holders = [c for c in ok if depth[c] > stage]
        if holders:  # example-weighted mean of the holders' constants: sum 10 (c+1)^2 / sum 10 (c+1)
            expected = sum(10 * (c + 1) ** 2 for c in holders) / sum(10 * (c + 1) for c in holders)
            np.testing.assert_allclose(value, expected, rtol=1e-6)
        else:
            np.testing.assert_array_equal(value, before[key])


def test_a_round_in_which_every_client_crashes_fails_loudly():
    with loop(make_config("wait", 0.5), constant_app(train_raises=set(range(NUM_CLIENTS)))) as lp:
        with pytest.raises(RuntimeError, match=r"(?s)every client failed to train in round 1: .*ran out of memory"):
            lp.train(1)


# ---------------------------------------------------------------------------- evaluation


def test_evaluate_round_collects_each_clients_evaluation_and_weighted_means():
    cfg = make_config("wait", 0.5, **{"strategy.fraction_evaluate": 1.0})
    with loop(cfg, constant_app(evaluate_raises={5})) as lp:
        evaluated, record = evaluate_round(lp.exchange, lp.strategy, 3, lp.arrays, lp.config(3))
        calls = lp.grid.calls["evaluate"]
    assert calls == NUM_CLIENTS
    assert sorted(evaluated) == record["clients"] == [0, 1, 2, 3, 4]  # client 5 raised
    assert all(evaluated[c] == Evaluation(3, eval_reply(c)) for c in evaluated)
    agg = record["aggregated"]
    # weights 10, 20, 30, 40, 50 (sum 150); accuracy 0.1..0.5: (1 + 4 + 9 + 16 + 25) / 150 = 55 / 150
    assert agg["num-examples"] == 150
    assert agg["accuracy"] == pytest.approx(55 / 150)
    assert agg["adaptive-accuracy"] == pytest.approx(55 / 300)
    assert agg["expected-flops"] == pytest.approx(100 * 55 / 15)  # 10 * 100 * 55 / 150
    assert agg["full-flops"] == pytest.approx(1000.0)
    assert set(agg) == {"num-examples", "accuracy", "adaptive-accuracy", "expected-flops", "full-flops",
                        "calib-accuracy", "overthinking"}


def test_evaluate_round_samples_by_fraction_evaluate():
    cfg = make_config("wait", 0.5, **{"strategy.fraction_evaluate": 0.5})
    with loop(cfg, constant_app()) as lp:
        evaluated, record = evaluate_round(lp.exchange, lp.strategy, 2, lp.arrays, lp.config(2))
        expected = [c.client_id for c in lp.strategy.sample(2, 0.5, Stream.SAMPLE_EVALUATE)]
    assert len(expected) == 3 and record["clients"] == expected == sorted(evaluated)
    assert {e.round for e in evaluated.values()} == {2}
    weights = [10 * (c + 1) for c in expected]
    assert record["aggregated"]["accuracy"] == pytest.approx(
        sum(w * (c + 1) / 10 for w, c in zip(weights, expected)) / sum(weights))


def test_final_evaluate_all_evaluates_every_client_after_the_last_round_only():
    cfg = make_config("wait", 0.5, **{"strategy.fraction_evaluate": 0.5, "strategy.final_evaluate_all": True,
                                      "rounds": 4})
    with loop(cfg, constant_app()) as lp:
        _, before = evaluate_round(lp.exchange, lp.strategy, 3, lp.arrays, lp.config(3))
        _, last = evaluate_round(lp.exchange, lp.strategy, 4, lp.arrays, lp.config(4))
        sampled = [c.client_id for c in lp.strategy.sample(3, 0.5, Stream.SAMPLE_EVALUATE)]
    assert before["clients"] == sampled and len(sampled) == 3
    assert last["clients"] == list(range(NUM_CLIENTS))


# ------------------------------------------------------------------------------ the summary


def _reply(cfg: Config, cid: int, n: int, exits: tuple, adaptive: float, expected: float, full: float,
           fractions: tuple, test, ensemble: float | None = None) -> EvaluateReply:
    return curve_reply(cfg, cid, n, exits, full, calib=lambda i: (0.9, full), test=test, adaptive=adaptive,
                       expected=expected, fractions=fractions, ensemble=ensemble)


def _three_tiers() -> tuple[Config, list[ClientInfo], dict[int, Evaluation]]:
    """Five clients in three tiers, three of them evaluated: (config, clients, results)."""
    cfg = config_from_dict({
        "seed": 3, "rounds": 2,
        "simulation": {"target_accuracy": 0.7},
        "tiers": [{"name": "small", "share": 0.4, "depth": 2}, {"name": "big", "share": 0.4, "depth": 3},
                  {"name": "idle", "share": 0.2, "depth": 1}],
    })
    clients = [ClientInfo(10 + i, i, tier, depth, 100, 20)
               for i, (tier, depth) in enumerate([("small", 2), ("small", 2), ("big", 3), ("big", 3), ("idle", 1)])]
    results = {  # client 3 (big) and client 4 (idle) were never evaluated
        0: Evaluation(2, _reply(cfg, 0, 10, (0.5, 0.6), 0.55, 10.0, 20.0, (0.5, 0.5), lambda t: (t / 10, t), 0.65)),
        1: Evaluation(1, _reply(cfg, 1, 30, (0.7, 0.8), 0.75, 16.0, 20.0, (0.2, 0.8), lambda t: (0.2, 2.0 * t),
                                0.85)),
        2: Evaluation(2, _reply(cfg, 2, 20, (0.6, 0.7, 0.9), 0.8, 24.0, 40.0, (0.4, 0.2, 0.4), lambda t: (0.5, 30.0),
                                0.95)),
    }
    return cfg, clients, results


def test_build_summary_by_hand():
    cfg, clients, results = _three_tiers()
    tier_counts = lambda s, o, l, u, f: {"sampled": s, "ok": o, "late": l, "unavailable": u, "failed": f}  # noqa
    clocks = [
        {"round_time_s": 3.0, "virtual_time_s": 3.0, "wasted_compute_s": 0.5,
         "energy_by_tier_j": {"small": 4.0, "big": 2.0, "idle": 0.0},
         "by_tier": {"small": tier_counts(2, 1, 1, 0, 0), "big": tier_counts(1, 1, 0, 0, 0),
                     "idle": tier_counts(0, 0, 0, 0, 0)}},
        {"round_time_s": 5.0, "virtual_time_s": 8.0, "wasted_compute_s": 1.0,
         "energy_by_tier_j": {"small": 1.0, "big": 3.0, "idle": 0.0},
         "by_tier": {"small": tier_counts(1, 0, 0, 1, 0), "big": tier_counts(2, 1, 0, 0, 1),
                     "idle": tier_counts(0, 0, 0, 0, 0)}},
    ]
    accuracy_at = [(3.0, None), (8.0, 0.65), (12.0, 0.72), (20.0, 0.9)]
    global_eval = {"by_exit": {"1": 0.3, "2": 0.4, "3": 0.5}, "ensemble": 0.45}
    s = build_summary(cfg, clients, results, global_eval, clocks, accuracy_at)
    approx = pytest.approx

    # personalised: deepest exits 0.6, 0.8 (small), 0.9 (big) -> mean 2.3 / 3
    p = s["accuracy"]["personalised"]
    assert p["mean"] == approx(2.3 / 3)
    assert p["by_tier"] == approx({"small": 0.7, "big": 0.9, "idle": None})
    assert p["by_exit"] == approx({"1": (0.5 + 0.7 + 0.6) / 3, "2": (0.6 + 0.8 + 0.7) / 3, "3": 0.9})
    assert p["by_tier_exit"] == {"small": approx({"1": 0.6, "2": 0.7, "3": None}),
                                 "big": approx({"1": 0.6, "2": 0.7, "3": 0.9}),
                                 "idle": {"1": None, "2": None, "3": None}}
    assert p["adaptive_accuracy"] == approx((0.55 + 0.75 + 0.8) / 3)
    assert p["adaptive_by_tier"] == approx({"small": 0.65, "big": 0.8, "idle": None})
    assert p["expected_flops"] == approx(50 / 3) and p["evaluated_clients"] == 3
    assert p["ensemble"] == approx((0.65 + 0.85 + 0.95) / 3)
    assert p["ensemble_by_tier"] == approx({"small": 0.75, "big": 0.95, "idle": None})
    assert s["accuracy"]["global"] == global_eval

    # fairness over 0.6, 0.8, 0.9: std sqrt(((-1/6)^2 + (1/30)^2 + (2/15)^2) / 3); Jain 2.3^2 / (3 * 1.81)
    f = s["fairness"]
    assert f["mean"] == approx(2.3 / 3) and f["min"] == approx(0.6)
    assert f["worst10"] == approx(0.6) and f["best10"] == approx(0.9)  # ceil(10% of 3) = 1 client
    assert f["std"] == approx(math.sqrt((1 / 36 + 1 / 900 + 4 / 225) / 3))
    assert f["jain"] == approx(2.3 ** 2 / (3 * 1.81))
    assert f["by_tier"] == approx({"small": 0.7, "big": 0.9, "idle": None}) and f["tier_gap"] == approx(0.2)

    # efficiency, weighted by test samples 10, 30, 20 (60):
    # exit 1: (0.5*10 + 0.2*30 + 0.4*20) / 60 = 19/60; exit 2: (5 + 24 + 4) / 60 = 33/60; exit 3: 8/60
    # expected (100 + 480 + 480) / 60 = 1060/60; full (200 + 600 + 800) / 60 = 1600/60; saving 1 - 1060/1600
    e = s["efficiency"]
    assert e["exit_distribution"] == approx({"1": 19 / 60, "2": 33 / 60, "3": 8 / 60})
    assert e["expected_flops"] == approx(1060 / 60) and e["flops_saving"] == approx(1 - 1060 / 1600)
    # small (10, 30): exit 1 (5 + 6) / 40, exit 2 (5 + 24) / 40, exit 3 none; expected 580/40 = 14.5 of 20
    assert e["by_tier"]["small"] == {"exit_distribution": approx({"1": 11 / 40, "2": 29 / 40, "3": 0.0}),
                                     "expected_flops": approx(14.5), "flops_saving": approx(1 - 14.5 / 20)}
    assert e["by_tier"]["big"] == {"exit_distribution": approx({"1": 0.4, "2": 0.2, "3": 0.4}),
                                   "expected_flops": approx(24.0), "flops_saving": approx(0.4)}
    assert e["by_tier"]["idle"] is None

    # budgeted curves: small's accuracy is the plain mean of t/10 and 0.2; its FLOPs weighted (10 t + 30 * 2t) / 40
    budgeted = s["deployment"]["budgeted"]["by_tier"]
    curve, j = budgeted["small"]["curves"]["entropy"], range(len(CONFIDENCE_GRID))
    assert curve == {"thresholds": list(CONFIDENCE_GRID), "accuracy": approx([(t / 10 + 0.2) / 2 for t in j]),
                     "expected_flops": approx([70 * t / 40 for t in j])}
    assert budgeted["big"]["curves"]["entropy"]["accuracy"] == approx([0.5] * len(j)) and budgeted["idle"] is None
    assert s["deployment"]["subnet"]["by_tier"]["big"] == {"1": {"accuracy": 0.6, "flops": approx(40 / 3)},
                                                           "2": {"accuracy": 0.7, "flops": approx(80 / 3)},
                                                           "3": {"accuracy": 0.9, "flops": 40.0}}

    assert s["clients"] == {"total": 5, "by_tier": {"small": 2, "big": 2, "idle": 1}}
    assert (s["rounds"], s["seed"]) == (2, 3)
    assert s["virtual_time_s"] == 8.0  # the last round's clock
    assert s["time_to_accuracy_s"] == 12.0  # first point at or above 0.7 (0.65 at 8 s is not)

    # stragglers over both rounds: sampled 3 + 3 = 6, late 1, failed 1, unavailable 1
    st = s["stragglers"]
    assert st["round_time_s"] == approx({"p50": 4.0, "p90": 3.0 + 0.9 * 2.0, "max": 5.0})
    assert st["late_fraction"] == approx(1 / 6)
    assert (st["dropped_updates"], st["unavailable"]) == (2, 1)
    # energy: small 4 + 1, big 2 + 3; 10 J over a personalised mean of 2.3 / 3 = 76.7 points
    assert s["energy"] == {"total_j": 10.0, "by_tier_j": {"small": 5.0, "big": 5.0, "idle": 0.0},
                           "per_accuracy_point_j": approx(10.0 / (100 * 2.3 / 3))}
    assert st["wasted_compute_s"] == approx(1.5)
    assert st["participation_by_tier"] == approx({"small": 1 / 3, "big": 2 / 3, "idle": None})
    assert st["outcomes_by_tier"] == {"small": tier_counts(3, 1, 1, 1, 0), "big": tier_counts(3, 2, 0, 0, 1),
                                      "idle": tier_counts(0, 0, 0, 0, 0)}


def test_build_summary_reports_unseen_clients_apart_by_hand():
    cfg, clients, results = _three_tiers()
    s = build_summary(cfg, clients, results, {}, [], [], unseen={1, 3})  # client 3 unseen but never evaluated
    approx = pytest.approx
    # participating and evaluated: 0 (small; exits 0.5, 0.6) and 2 (big; 0.6, 0.7, 0.9); unseen: 1 (small; 0.7, 0.8)
    p, u = s["accuracy"]["personalised"], s["unseen"]
    assert p["mean"] == approx(0.75) and p["evaluated_clients"] == 2 and s["fairness"]["std"] == approx(0.15)
    assert s["efficiency"]["expected_flops"] == approx((10 * 10.0 + 20 * 24.0) / 30)  # over 0 and 2 alone
    assert s["clients"] == {"total": 5, "by_tier": {"small": 2, "big": 2, "idle": 1}}
    assert u["client_ids"] == [1, 3] and u["clients"] == {"total": 2, "by_tier": {"small": 1, "big": 1, "idle": 0}}
    assert u["personalised"]["mean"] == approx(0.8) and u["personalised"]["evaluated_clients"] == 1
    assert u["fairness"]["mean"] == approx(0.8) and u["fairness"]["std"] == 0.0
    gap = u["gap"]
    assert gap["mean"] == approx(0.75 - 0.8)
    assert gap["by_tier"] == approx({"small": 0.6 - 0.8, "big": None, "idle": None})
    assert gap["by_exit"] == approx({"1": 0.55 - 0.7, "2": 0.65 - 0.8, "3": None})
    assert gap["adaptive_accuracy"] == approx((0.55 + 0.8) / 2 - 0.75)
    assert gap["ensemble"] == approx((0.65 + 0.95) / 2 - 0.85)
    assert "unseen" not in build_summary(cfg, clients, results, {}, [], [])


def test_build_summary_without_rounds_or_target():
    cfg = config_from_dict({"tiers": [{"name": "only", "share": 1.0, "depth": 2}]})
    clients = [ClientInfo(7, 0, "only", 2, 10, 5)]
    s = build_summary(cfg, clients, {}, {}, [], [(1.0, 0.99)])
    assert s["virtual_time_s"] == 0.0
    assert s["time_to_accuracy_s"] is None  # no target set
    assert s["accuracy"]["personalised"]["mean"] is None and s["efficiency"]["by_tier"] == {"only": None}
    assert s["stragglers"]["late_fraction"] == 0.0 and s["stragglers"]["outcomes_by_tier"] == {}
