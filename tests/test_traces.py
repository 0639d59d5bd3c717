"""Availability traces on the virtual clock: the file, the converter, sampling and mid-round drops, by hand."""

import json
import math

import pytest

from fl_ee.core.config import config_from_dict
from fl_ee.core.errors import UserError
from fl_ee.federation.preflight import check_trace
from fl_ee.models import EarlyExitNet, ModelSpec
from sims.clock import FAILED, OK, UNAVAILABLE
from sims.emulator import DeviceEmulator
from sims.traces import (
    capacity_from_fedscale,
    from_fedscale,
    load_availability,
    load_capacity,
    next_online,
    online_until,
)
from strategies import ClientInfo, DepthAwareStrategy

# depth 1 of an 8x8 single-channel CNN, linear head (as tests/test_clock.py): 362 parameters, 1,448 bytes
FLOPS = 3 * (2 * 64 * 1 * 16 * 9 + 2 * 16 * 10) * 10  # 3 x forward x 10 samples x 1 epoch
BYTES = ((16 * 9 + 16) + (16 + 16) + (16 * 10 + 10)) * 4
TOTAL_S = BYTES * 8 / 1e6 + FLOPS / 1e9 + BYTES * 8 / 0.5e6  # down 1 Mbit/s, 1 GFLOP/s, up 0.5 Mbit/s


def _write(tmp_path, value, name="trace.json"):
    path = tmp_path / name
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return str(path)


def emulator_of(tmp_path, trace=None, clients=4, capacity=None, **tier):
    """A hand-made device emulator: ``clients`` of one tier (``tier`` overrides its figures), under the traces."""
    raw = {"rounds": 2, "data": {"num_clients": clients}, "model": {"exit_head": "linear"},
           "personalisation": {"mode": "none"},
           "simulation": {"availability_trace": _write(tmp_path, trace) if trace is not None else "",
                          "capacity_trace": _write(tmp_path, capacity, "capacity.json") if capacity else ""},
           "tiers": [{"name": "t", "share": 1.0, "depth": 1, "compute_gflops": 1.0, "download_mbps": 1.0,
                      "upload_mbps": 0.5, "availability": 0.0 if trace else 1.0, **tier}]}
    cfg = config_from_dict(raw)
    roster = [ClientInfo(c, c, "t", 1, num_train=10, num_test=3) for c in range(clients)]
    model = EarlyExitNet(ModelSpec(1, 8, 8, 10, width=16, exit_head="linear"))
    return DeviceEmulator(cfg, model, roster), roster


def test_intervals_say_who_is_online_and_until_when():
    spans = ((0.0, 10.0), (20.0, 30.0))
    assert online_until(spans, 0.0) == 10.0 and online_until(spans, 25.0) == 30.0
    assert online_until(spans, 10.0) is None and online_until(spans, 15.0) is None  # end is exclusive
    assert online_until(None, 1e9) == math.inf and online_until((), 0.0) is None
    trace = {0: spans, 1: ((12.0, 13.0),)}
    assert next_online(trace, [0, 1], 15.0) == 20.0 and next_online(trace, [0, 1], 11.0) == 12.0
    assert next_online(trace, [0, 1], 5.0) == 5.0 and next_online(trace, [0, 1], 30.0) is None
    assert next_online(trace, [0, 2], 40.0) == 40.0  # client 2 is not in the trace: always online


def test_a_client_going_offline_mid_work_drops_and_an_offline_one_is_unavailable(tmp_path):
    emulator, roster = emulator_of(tmp_path, {"0": [[0, 100]], "1": [[0, 0.02]], "2": []})  # tier availability 0
    assert emulator.times[0].total_s == pytest.approx(TOTAL_S)  # 0.0353 s, above client 1's 0.02 s online
    clock = emulator.begin(1, roster)
    assert [clock.runs(c) for c in roster] == [True, False, False, True]
    emulator.settle(clock, [c for c in roster if clock.runs(c)], {}, keep=4)
    assert clock.outcomes == {0: OK, 1: FAILED, 2: UNAVAILABLE, 3: OK}
    assert clock.presence[1].fail_at == pytest.approx(0.02 / TOTAL_S)
    assert clock.reasons[1].startswith("went offline at 0.02 s") and "availability trace" in clock.reasons[2]
    record = emulator.record(clock)
    assert record["clients"][1]["time_s"] == pytest.approx(0.02) and record["waited_s"] == 0.0
    assert record["virtual_time_s"] == pytest.approx(TOTAL_S)


def test_an_async_start_reads_the_trace_at_its_own_start_time(tmp_path):
    """The emulator's clock is at 0 s (no version made yet); client 1 starts at 5 s, online [5, 5.02): drops at 5.02."""
    emulator, roster = emulator_of(tmp_path, {"1": [[5, 5.02]]})
    time, presence = emulator.dispatch(roster[1], 1, draw=0, start_s=5.0)
    assert time == emulator.times[1] and presence.available and presence.fails and presence.offline_s == 5.02
    assert presence.fail_at == pytest.approx(0.02 / TOTAL_S)
    assert presence.reason == f"went offline at 5.02 s, 0.02 s into its {TOTAL_S:.4g} s round (availability trace)"
    assert not emulator.dispatch(roster[1], 1, draw=1, start_s=0.0)[1].available  # offline at 0 s
    _, finishes = emulator.dispatch(roster[0], 1, draw=2, start_s=5.0)  # not in the trace: always online
    assert finishes.available and not finishes.fails and finishes.offline_s == math.inf


def test_only_online_clients_are_sampled_and_the_clock_waits_for_the_first(tmp_path):
    emulator, roster = emulator_of(tmp_path, {"0": [[50, 60]], "1": [[55, 70]], "2": [[80, 90]], "3": []})
    online = emulator.online(roster)
    assert online == {0} and emulator.virtual_time_s == 50.0 and emulator.waited_s == 50.0
    strategy = DepthAwareStrategy(fraction_train=0.5)
    strategy.register_clients(roster)
    strategy.online = online
    assert [c.client_id for c in strategy.sample_train(1)] == [0]  # k = 2 of 4, but one is online
    emulator.virtual_time_s = 56.0
    assert emulator.online(roster) == {0, 1} and emulator.waited_s == 0.0
    emulator.virtual_time_s = 95.0
    assert emulator.online(roster) == frozenset() and emulator.virtual_time_s == 95.0  # never again: no wait


def test_without_a_trace_sampling_draws_as_before():
    roster = [ClientInfo(c, c, "t", 1, 10, 3) for c in range(10)]
    strategy = DepthAwareStrategy(fraction_train=0.3, seed=4)
    strategy.register_clients(roster)
    everyone = strategy.sample_train(3)
    strategy.online = frozenset(range(10))
    assert strategy.sample_train(3) == everyone and len(everyone) == 3


@pytest.mark.parametrize(("content", "needle"), [
    ("{", "not JSON"),
    ([[0, 1]], "expected a JSON object"),
    ({"a": []}, "key 'a': expected a client id"),
    ({"1": [[5, 2]]}, "client '1' interval 0: needs 0 <= start_s < end_s"),
    ({"1": [[0, 5], [4, 8]]}, "client '1' interval 1: starts before interval 0 ends"),
    ({"3": [[0, "x"]]}, "client '3' interval 0: expected [start_s, end_s] of finite numbers"),
    ({"3": 7}, "client '3': expected a list"),
])
def test_a_bad_trace_is_one_line_naming_the_key(tmp_path, content, needle):
    with pytest.raises(UserError) as error:
        load_availability(_write(tmp_path, content))
    message = str(error.value)
    assert message.startswith("simulation.availability_trace: ") and needle in message and "\n" not in message


def test_the_preflight_reads_the_trace_and_names_a_missing_file(tmp_path):
    cfg = config_from_dict({"simulation": {"availability_trace": str(tmp_path / "missing.json")}})
    with pytest.raises(UserError, match="^simulation.availability_trace: .*missing.json: cannot be read"):
        check_trace(cfg)


def test_fedscale_behaviour_trace_converts_by_hand():
    raw = {"7": {"active": [0, 40], "inactive": [10, 100], "finish_time": 100},
           "9": {"active": [5], "inactive": [15], "finish_time": 20}}
    out = from_fedscale(raw, horizon_s=250)
    assert out["7"] == [[0, 10], [40, 110], [140, 210], [240, 250]]  # 100 -> 100: the spells join at the wrap
    assert out["9"] == [[5 + 20 * k, 15 + 20 * k] for k in range(12)] + [[245, 250]]
    with pytest.raises(ValueError, match="client '1'"):
        from_fedscale({"1": {"active": [0]}}, 10)


def test_the_shipped_example_trace_reads_back():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "sims" / "availability"
    trace = load_availability(str(folder / "example-20.json"))
    assert sorted(trace) == list(range(20)) and all(end <= 200 for spans in trace.values() for _, end in spans)
    hundred = load_availability(str(folder / "example-100.json"))  # the same generator over range(100)
    assert sorted(hundred) == list(range(100)) and all(hundred[c] == trace[c] for c in trace)


@pytest.mark.e2e
def test_a_tiny_run_under_a_trace_samples_only_online_clients_and_drops_the_one_going_offline(tmp_path):
    from inprocess import TINY, run_inprocess

    path = _write(tmp_path, {"0": [[0, 0.01]], "1": [], "2": [[0, 1000]]})
    trace = load_availability(path)
    run_inprocess(tmp_path / "run", [*TINY, "strategy.fraction_train=1.0", f'simulation.availability_trace="{path}"'])
    clocks = [json.loads(line)["clock"] for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [[e["client_id"] for e in c["clients"]] for c in clocks] == [[0, 2, 3, 4, 5], [2, 3, 4, 5]]
    assert clocks[0]["clients"][0]["outcome"] == FAILED and clocks[0]["clients"][0]["time_s"] == pytest.approx(0.01)
    start = 0.0
    for clock in clocks:
        start += clock["waited_s"]
        for entry in clock["clients"]:
            until = online_until(trace.get(entry["client_id"]), start)
            assert until is not None  # sampled only while online at the round's start
            if "availability trace" in entry.get("reason", ""):  # dropped the moment it went offline
                assert entry["outcome"] == FAILED and entry["time_s"] == pytest.approx(until - start)
            else:
                assert entry["outcome"] == OK and start + entry["time_s"] <= until
        start = clock["virtual_time_s"]
    assert start == pytest.approx(sum(c["waited_s"] + c["round_time_s"] for c in clocks))


def test_a_capacity_trace_replaces_the_tiers_figures_of_its_clients(tmp_path):
    emulator, _ = emulator_of(tmp_path, capacity={"1": {"compute_gflops": 2.0, "upload_mbps": 1.0}},
                              speed_sigma=0.5)  # a trace's client takes no speed draw
    fast = emulator.times[1]
    assert fast.compute_s == pytest.approx(FLOPS / 2e9) and fast.upload_s == pytest.approx(BYTES * 8 / 1e6)
    assert fast.download_s == pytest.approx(BYTES * 8 / 1e6)  # the tier's 1 Mbit/s: not in the trace
    assert emulator.times[0].upload_s == pytest.approx(BYTES * 8 / 0.5e6)  # not in the trace: the tier's
    assert emulator.times[0].compute_s != pytest.approx(FLOPS / 1e9)  # ... with its speed draw


@pytest.mark.parametrize(("content", "needle"), [
    ({"1": {"gflops": 2}}, "client '1': expected an object of some of compute_gflops, download_mbps, upload_mbps"),
    ({"1": {"upload_mbps": 0}}, "client '1' upload_mbps: must be a finite number > 0, got 0"),
    ({"x": {"upload_mbps": 1}}, "key 'x': expected a client id"),
])
def test_a_bad_capacity_trace_is_one_line_naming_the_key(tmp_path, content, needle):
    with pytest.raises(UserError) as error:
        load_capacity(_write(tmp_path, content))
    message = str(error.value)
    assert message.startswith("simulation.capacity_trace: ") and needle in message and "\n" not in message


def test_fedscale_device_capacity_converts_by_hand():
    out = capacity_from_fedscale({"4": {"computation": 50.0, "communication": 5000.0}}, reference_flops=1e9)
    assert out == {"4": {"compute_gflops": pytest.approx(20.0), "download_mbps": 5.0, "upload_mbps": 5.0}}
    with pytest.raises(ValueError, match="client '4'"):
        capacity_from_fedscale({"4": {"computation": 0, "communication": 1}}, 1e9)
