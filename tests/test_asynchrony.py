"""Asynchronous federations' pure pieces: arrivals on the virtual clock, staleness weights, FedBuff's step."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from fl_ee.cli import main
from fl_ee.core.config import config_from_dict
from fl_ee.core.errors import UserError
from fl_ee.federation.asynchronous import async_problem, check_async
from fl_ee.federation.checkpoint import Checkpoints
from sims.asynchrony import Schedule, Timeline, staleness_weight
from sims.clock import FAILED, OK, UNAVAILABLE
from sims.traces import online_until
from strategies import QFedAvg, build_strategy
from strategies.aggregation import buffered_update, weighted_mean


def mean_rule(key, values, weights, current):
    return weighted_mean(values, weights)


def test_staleness_weights_by_hand() -> None:
    assert staleness_weight("constant", 7) == 1.0
    assert staleness_weight("polynomial", 0, a=0.5) == 1.0
    assert staleness_weight("polynomial", 3, a=0.5) == pytest.approx(0.5)  # (1 + 3)^-0.5
    assert staleness_weight("polynomial", 1, a=2.0) == pytest.approx(0.25)
    assert staleness_weight("hinge", 4, a=10, b=4) == 1.0
    assert staleness_weight("hinge", 5, a=10, b=4) == pytest.approx(1 / 11)
    assert staleness_weight("hinge", 6, a=10, b=4) == pytest.approx(1 / 21)
    with pytest.raises(ValueError, match="staleness"):
        staleness_weight("polynomial", -1)


def test_three_client_script_arrives_in_virtual_time_order_with_its_staleness() -> None:
    """Concurrency 2, buffer 1, round times 3 s, 5 s and 1 s; each freed slot starts the next client of the script.

    By hand: 0 and 1 start at 0 s (version 0); 0 arrives at 3 (staleness 0 -> v1), 2 starts at 3 from v1;
    2 arrives at 4 (0 -> v2), 0 starts at 4 from v2; 1 arrives at 5 (started at v0: staleness 2 -> v3),
    2 starts at 5 from v3; 2 arrives at 6 (0 -> v4); 0 arrives at 7 (started at v2: staleness 2 -> v5).
    """
    duration = {0: 3.0, 1: 5.0, 2: 1.0}
    script = iter([2, 0, 2])
    timeline, version = Timeline(), 0
    for client in (0, 1):
        timeline.start(client, version, 0.0, duration[client])  # from 0 s: arrives at its duration
    arrivals = []
    while timeline:
        job = timeline.next()
        staleness = version - job.version
        arrivals.append((job.finish_s, job.client_id, staleness, staleness_weight("polynomial", staleness, a=0.5)))
        version += 1  # buffer 1: every arrival makes a version
        if (client := next(script, None)) is not None:
            assert client not in timeline.busy()
            timeline.start(client, version, job.finish_s, job.finish_s + duration[client])
    assert [a[:3] for a in arrivals] == [(3.0, 0, 0), (4.0, 2, 0), (5.0, 1, 2), (6.0, 2, 0), (7.0, 0, 2)]
    assert [a[3] for a in arrivals] == pytest.approx([1, 1, 3 ** -0.5, 1, 3 ** -0.5])


def _scripted(schedule: Schedule, duration: dict[int, float], count: int, prefer=min) -> list[tuple]:
    """The first ``count`` arrivals of ``schedule``; each free slot takes ``prefer`` of the clients that may start.

    A client runs ``duration`` seconds, or drops when its trace interval ends first (the device emulator's rule).
    Each arrival: (time, client, started at, dropped, the slots' waited seconds taken at it).
    """
    def fill(ids: list[int]) -> None:
        client, now = prefer(ids), schedule.now
        schedule.start(client, 0, min(now + duration[client], online_until((schedule.trace or {}).get(client), now)))

    return [(job.finish_s, job.client_id, job.start_s, job.finish_s < job.start_s + duration[job.client_id],
             schedule.take_waited()) for job in itertools.islice(schedule.arrivals(fill), count)]


def test_under_a_trace_a_slot_takes_only_online_clients_and_a_drop_frees_it_when_offline() -> None:
    """Three slots, round times 3 s, 5 s, 1 s; client 0 always online, 1 online [0, 4), 2 online from 2 s.

    By hand: 0 and 1 start at 0 (2 is offline); the third slot waits until 2 comes online at 2 s, 2 s of
    waiting. 0 arrives at 3 and 2 at 3 (ties by start order); both start again at 3 (0 until 6, 2 until 4).
    1 would finish at 5 but goes offline at 4: it drops then, before 2's arrival at 4 (started first);
    its slot stays free (1 is never online again) while 2 runs again 4-5 and 5-6 and 0 arrives at 6.
    """
    schedule = Schedule(3, [0, 1, 2], {1: ((0.0, 4.0),), 2: ((2.0, 100.0),)})
    arrivals = _scripted(schedule, {0: 3.0, 1: 5.0, 2: 1.0}, 6)
    assert arrivals == [(3.0, 0, 0.0, False, 2.0), (3.0, 2, 2.0, False, 0.0), (4.0, 1, 0.0, True, 0.0),
                        (4.0, 2, 3.0, False, 0.0), (5.0, 2, 4.0, False, 1.0), (6.0, 0, 3.0, False, 1.0)]


def test_under_a_trace_the_clock_waits_for_the_next_client_online_and_ends_when_none_comes() -> None:
    """Two slots, round times 0.5 s and 3 s; client 0 online [0, 1), client 1 online [0, 1) and [10, 12).

    By hand: 0 runs 0-0.5 and 0.5-1; 1 drops at 1. Nobody is online from 1 s: the clock waits 9 s and starts
    1 at 10, which drops at 12 (its 3 s would end at 13); a slot stood free 10-12 (2 s). Then nothing is in
    flight and nobody comes online again: the arrivals end (no loop, no error).
    """
    schedule = Schedule(2, [0, 1], {0: ((0.0, 1.0),), 1: ((0.0, 1.0), (10.0, 12.0))})
    arrivals = _scripted(schedule, {0: 0.5, 1: 3.0}, 100, prefer=max)
    assert arrivals == [(0.5, 0, 0.0, False, 0.0), (1.0, 1, 0.0, True, 0.0), (1.0, 0, 0.5, False, 0.0),
                        (12.0, 1, 10.0, True, 11.0)]
    assert schedule.now == 12.0 and not schedule.timeline


def test_without_a_trace_every_slot_is_always_full() -> None:
    """Two slots, the lowest idle client first: 0 and 1 at 0; 0 again at 3 (to 6) and 6 (to 9); 1 arrives at 5."""
    schedule = Schedule(2, [0, 1, 2])
    arrivals = _scripted(schedule, {0: 3.0, 1: 5.0, 2: 1.0}, 4)
    assert [a[:3] for a in arrivals] == [(3.0, 0, 0.0), (5.0, 1, 0.0), (6.0, 0, 3.0), (9.0, 0, 6.0)]
    assert schedule.waited_s == 0.0 and all(a[4] == 0.0 for a in arrivals)


def test_ties_arrive_in_start_order() -> None:
    timeline = Timeline()
    for client in (5, 3, 4):
        timeline.start(client, 0, 0.0, 2.0)
    assert [timeline.next().client_id for _ in range(3)] == [5, 3, 4]


def test_fedbuff_with_buffer_one_is_fedasync() -> None:
    """FedAsync (Xie et al. 2019): x <- (1 - a s) x + a s u for a client that started from x."""
    x = {"stages.0.w": np.array([1.0, 2.0], np.float32)}
    u = {"stages.0.w": np.array([3.0, 6.0], np.float32)}
    alpha, s = 0.8, staleness_weight("polynomial", 1, a=1.0)  # 0.5
    new = buffered_update([u], [x], [10], [alpha * s], x, mean_rule)
    np.testing.assert_allclose(new["stages.0.w"], (1 - alpha * s) * x["stages.0.w"] + alpha * s * u["stages.0.w"])
    np.testing.assert_allclose(new["stages.0.w"], [1.8, 3.6])
    assert new["stages.0.w"].dtype == np.float32
    # a stale client's change is taken from the version it started at and applied to the current one
    start = {"stages.0.w": np.array([0.0, 0.0], np.float32)}
    stale = buffered_update([{"stages.0.w": np.array([1.0, 1.0], np.float32)}], [start], [1], [0.5], x, mean_rule)
    np.testing.assert_allclose(stale["stages.0.w"], [1.5, 2.5])


def test_buffered_update_is_holder_aware() -> None:
    """A (depth 1, 1 example, scale 1) and B (depth 2, 3 examples, scale 0.5), from different versions.

    stages.0: 0 + (1 x 1 x [2, 4] + 3 x 0.5 x [2, 2]) / 4 = [1.25, 1.75]; stages.1 only B: 10 + 0.5 x (12 - 8) = 12;
    exits.1 nobody holds: kept; B's integer counter is taken as sent.
    """
    current = {"stages.0.w": np.zeros(2), "stages.1.w": np.array([10.0]), "exits.1.w": np.array([7.0]),
               "stages.1.n": np.array(4)}
    start_a = {"stages.0.w": np.zeros(2)}
    start_b = {"stages.0.w": np.ones(2), "stages.1.w": np.array([8.0]), "stages.1.n": np.array(2)}
    a = {"stages.0.w": np.array([2.0, 4.0])}
    b = {"stages.0.w": np.array([3.0, 3.0]), "stages.1.w": np.array([12.0]), "stages.1.n": np.array(9)}
    new = buffered_update([a, b], [start_a, start_b], [1, 3], [1.0, 0.5], current, mean_rule)
    np.testing.assert_allclose(new["stages.0.w"], [1.25, 1.75])
    np.testing.assert_allclose(new["stages.1.w"], [12.0])
    np.testing.assert_allclose(new["exits.1.w"], [7.0])
    assert int(new["stages.1.n"]) == 9


def test_buffered_update_of_width_sliced_clients_moves_their_corners() -> None:
    """A width-sliced client's change on its corner only: current [[0, 0], [0, 0]], its corner [[1]] from [[0.5]]."""
    current = {"stages.0.w": np.zeros((2, 2))}
    new = buffered_update([{"stages.0.w": np.array([[1.0]])}], [{"stages.0.w": np.full((2, 2), 0.5)}], [1], [1.0],
                          current, mean_rule)
    np.testing.assert_allclose(new["stages.0.w"], [[0.5, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize(("simulation", "message"), [
    ({"mode": "async", "straggler_policy": "deadline", "deadline_s": 5.0},
     "simulation.straggler_policy: must be wait with mode = async"),
    ({"mode": "asynchronous"}, "simulation.mode"),
    ({"concurrency": 0}, "simulation.concurrency"),
    ({"buffer_size": 0}, "simulation.buffer_size"),
    ({"staleness": "linear"}, "simulation.staleness"),
    ({"staleness_a": -1}, "simulation.staleness_a"),
    ({"server_lr": 0}, "simulation.server_lr"),
])
def test_async_keys_are_checked(simulation, message) -> None:
    with pytest.raises(UserError, match=message):
        config_from_dict({"simulation": simulation})


def test_sync_is_the_default() -> None:
    assert config_from_dict({}).simulation.mode == "sync"


def test_fedadam_steps_on_the_buffered_pseudo_gradient() -> None:
    """FedAdam's first step on the buffer's mean change d (by hand: m = (1 - b1) d, v = (1 - b2) d^2).

    Two clients of 1 and 3 examples, changes [4] and [0] from their starts, scales 1 and 0.5: d = (4 + 0) / 4 = 1.
    """
    adam = build_strategy(config_from_dict({"strategy": {"name": "fedadam", "options": {"eta": 0.1}}}))
    current = {"stages.0.w": np.array([1.0])}
    new = buffered_update([{"stages.0.w": np.array([6.0])}, {"stages.0.w": np.array([5.0])}],
                          [{"stages.0.w": np.array([2.0])}, {"stages.0.w": np.array([5.0])}], [1, 3], [1.0, 0.5],
                          current, adam.aggregate_tensor)
    b1, b2, tau = adam.beta_1, adam.beta_2, adam.tau
    np.testing.assert_allclose(adam.m["stages.0.w"], [1 - b1])
    np.testing.assert_allclose(new["stages.0.w"], [1 + 0.1 * (1 - b1) / (np.sqrt(1 - b2) + tau)])


@pytest.mark.parametrize("name", ["depthfl", "exclusive", "fedadam", "fedyogi"])
def test_depth_aware_strategies_run_asynchronously(name) -> None:
    assert async_problem(build_strategy(config_from_dict({"strategy": {"name": name}}))) is None


def test_a_whole_round_rule_cannot_run_asynchronously_unless_it_aggregates_a_buffer() -> None:
    qfedavg = build_strategy(config_from_dict({"strategy": {"name": "qfedavg"}}))
    assert async_problem(qfedavg) == (
        "strategy QFedAvg overrides aggregate_train (a rule for whole rounds) and defines no aggregate_buffer, "
        "so it cannot run asynchronously; use depthfl, exclusive, fedadam or fedyogi")

    class Buffered(QFedAvg):
        def aggregate_buffer(self, server_version, replies, starts, scales, current):
            return None, None

    assert async_problem(Buffered()) is None
    fednova = build_strategy(config_from_dict({"strategy": {"options": {"fednova": True}}}))
    with pytest.raises(UserError, match="simulation.mode: fednova normalises a whole round"):
        check_async(fednova)


def _clocks(run) -> list[dict]:
    return [json.loads(line)["clock"] for line in (run / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.e2e
def test_a_tiny_async_run_is_deterministic_and_its_updates_add_up(tmp_path, capsys) -> None:
    """Two runs of the same seed, replies coming back in different orders: the same files; the records add up."""
    from inprocess import REVERSED, TINY, run_inprocess

    overrides = [*TINY, "rounds=3", "eval_every=3", "simulation.mode='async'", "simulation.concurrency=3",
                 "simulation.buffer_size=2", "simulation.staleness='hinge'", "simulation.staleness_b=0"]
    grid, summary = run_inprocess(tmp_path / "a", overrides)
    run_inprocess(tmp_path / "b", overrides, seed=1, order=REVERSED)
    for name in ("summary.json", "clients.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    clocks = _clocks(tmp_path / "a")
    assert len(clocks) == 3
    arrived = [[e for e in c["clients"] if e["outcome"] != UNAVAILABLE] for c in clocks]
    assert [len(a) for a in arrived] == [2, 2, 2]  # every version is a buffer of 2 arrivals
    ok = [(v + 1, e) for v, a in enumerate(arrived) for e in a if e["outcome"] == OK]
    assert all(e["staleness"] == version - 1 - e["from_version"] for version, e in ok)
    assert all(e["started_s"] + e["time_s"] <= c["virtual_time_s"] + 1e-12 for c, a in zip(clocks, arrived)
               for e in a)
    times = [c["virtual_time_s"] for c in clocks]
    assert times == sorted(times) and summary["virtual_time_s"] == times[-1]
    shares = summary["async"]["update_share_by_tier"]
    assert summary["async"]["updates"] == len(ok)
    assert sum(s for s in shares.values() if s is not None) == pytest.approx(1.0)
    for tier, share in shares.items():
        assert share == pytest.approx(sum(e["tier"] == tier for _, e in ok) / len(ok))
    started = sum(len(a) for a in arrived) - sum(e["outcome"] == FAILED and "dropped" in e.get("reason", "")
                                                 for a in arrived for e in a)
    assert grid.calls["train"] >= started  # every arrival that ran was trained (and those still in flight)
    assert main(["report", str(tmp_path / "a")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Async updates" in out and f"updates aggregated {len(ok)}" in out


@pytest.mark.e2e
def test_an_async_run_on_ray_matches_the_in_process_one(tmp_path) -> None:
    """``fl-ee run`` on Ray (replies in Ray's order, up to 3 clients training at once), then in process: same files."""
    import subprocess
    import sys

    from inprocess import run_inprocess, sets

    overrides = ["rounds=3", "eval_every=3", "data.num_clients=6", "simulation.mode=async",
                 "simulation.concurrency=3", "simulation.buffer_size=2"]
    done = subprocess.run([sys.executable, "-m", "fl_ee.cli", "run", *sets(overrides),
                           "--out", str(tmp_path / "ray")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run_inprocess(tmp_path / "here", overrides, seed=3)
    for name in ("summary.json", "clients.csv"):
        assert (tmp_path / "here" / name).read_text() == (tmp_path / "ray" / name).read_text()
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["async"]["updates"] > 0


# quickstart's 6 clients: 0 goes offline at 0.05 s, 1 is never online, 2 comes online at 0.3 s, 3 is away
# 0.2-0.5 s, 4 (an IoT board, about 2 s a round) goes offline at 0.35 s, 5 is always online
TINY_TRACE = {"0": [[0, 0.05]], "1": [], "2": [[0.3, 1000]], "3": [[0, 0.2], [0.5, 1000]], "4": [[0, 0.35]]}


@pytest.fixture(scope="module")
def async_runs(tmp_path_factory):
    """The uninterrupted async run, without or with ``TINY_TRACE``, made once a module on first use: its folder,
    with ``run`` and copies of ``run`` as killed in versions 2 and 3 (``killed-in-2``, ``killed-in-3``)."""
    from test_resume import CopyIn

    from inprocess import TINY, run_inprocess

    made: dict[bool, Path] = {}

    def get(trace: bool) -> Path:
        if trace not in made:
            folder = tmp_path_factory.mktemp("async")
            overrides = [*TINY, "rounds=3", "eval_every=2", "simulation.mode='async'", "simulation.concurrency=4",
                         "simulation.buffer_size=2"]
            if trace:
                (folder / "trace.json").write_text(json.dumps(TINY_TRACE))
                overrides.append(f'simulation.availability_trace="{folder / "trace.json"}"')
            run_inprocess(folder / "run", overrides,
                          observers=[CopyIn(k, folder / "run", folder / f"killed-in-{k}") for k in (2, 3)])
            made[trace] = folder
        return made[trace]

    return get


@pytest.mark.e2e
@pytest.mark.parametrize(("kill_in", "trace", "in_flight"), [(2, False, 3), (3, False, 3), (2, True, 3)])
def test_a_resumed_async_run_ends_byte_for_byte_as_an_uninterrupted_one(async_runs, tmp_path, kill_in, trace,
                                                                        in_flight) -> None:
    """Killed in version 2 or 3 (clients in flight, replies in: both in the checkpoint), resumed with fresh clients.

    Under an availability trace the run itself keeps to it: each client starts only while online, and a client
    whose interval ends before its finish drops then, with the trace's reason, and is not aggregated.
    """
    from test_resume import _poison_stale_exits, _same_results, copy_of

    from inprocess import resume_inprocess

    folder = async_runs(trace)
    killed = copy_of(folder / f"killed-in-{kill_in}", tmp_path)
    latest = Checkpoints(killed).latest()
    assert latest is not None and latest.round == kill_in - 1
    saved = latest.load(build_strategy(config_from_dict({}))).async_state
    assert saved["version"] == kill_in - 1 and len(saved["jobs"]) == in_flight  # the last arrival's slot not refilled
    assert any(name.startswith("reply/") for name in saved)  # replies of clients still in flight, kept
    assert bool(saved["dropped"]) == trace  # under the trace, client 4 in flight, to drop at 0.35 s with its reason
    _poison_stale_exits(killed, kill_in - 1)  # were a client file of a later version read, results would differ
    resume_inprocess(killed, seed=7)
    _same_results(killed, folder / "run")
    if trace:
        _kept_to_the_trace(_clocks(folder / "run"))


def _kept_to_the_trace(clocks: list[dict]) -> None:
    """Every arrival started while its client was online and ran to its finish or dropped when it went offline."""
    trace = {int(c): tuple(map(tuple, spans)) for c, spans in TINY_TRACE.items()}
    dropped = 0
    for clock in clocks:
        for entry in clock["clients"]:
            until = online_until(trace.get(entry["client_id"]), entry["started_s"])
            assert until is not None
            if "availability trace" in entry.get("reason", ""):
                dropped += 1
                assert entry["outcome"] == FAILED and "staleness" not in entry  # not aggregated
                assert entry["started_s"] + entry["time_s"] == pytest.approx(until)
                assert entry["reason"].startswith(f"went offline at {until:g} s")
            else:
                assert entry["started_s"] + entry["time_s"] <= until
    assert dropped >= 3 and sum(c["waited_s"] for c in clocks) > 0  # clients 0, 3 and 4 drop; slots stood free


def test_an_async_run_whose_clients_never_come_online_again_ends_with_empty_versions(tmp_path, capsys) -> None:
    """Every client online [0, 0.01): the first two drop at 0.01 s (version 1); nobody comes online again, so
    version 2 aggregates nothing, the clock stays, and the run ends with one warning and its summary's."""
    from inprocess import TINY, run_inprocess

    (tmp_path / "trace.json").write_text(json.dumps({str(c): [[0, 0.01]] for c in range(6)}))
    _, summary = run_inprocess(tmp_path / "run", [
        *TINY, "eval_every=2", "simulation.mode='async'", "simulation.concurrency=2", "simulation.buffer_size=2",
        f'simulation.availability_trace="{tmp_path / "trace.json"}"'])
    clocks = _clocks(tmp_path / "run")
    assert [[(e["outcome"], e["time_s"]) for e in c["clients"]] for c in clocks] == [[(FAILED, 0.01)] * 2, []]
    assert [c["virtual_time_s"] for c in clocks] == [0.01, 0.01] and summary["virtual_time_s"] == 0.01
    err = capsys.readouterr().err
    assert ("no client is online after 0.01 s of virtual time (simulation.availability_trace): server version 2 "
            "aggregates what had arrived\n") in err
    assert any(w.startswith("no client trained in any of the 2 rounds") for w in summary["warnings"])
