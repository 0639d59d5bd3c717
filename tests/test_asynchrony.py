"""Asynchronous federations' pure pieces: arrivals on the virtual clock, staleness weights, FedBuff's step."""

from __future__ import annotations

import numpy as np
import pytest

from fl_ee.core.config import config_from_dict
from fl_ee.core.errors import UserError
from sims.asynchrony import Timeline, staleness_weight
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
        timeline.start(client, version, 0.0, duration[client])
    arrivals = []
    while timeline:
        job = timeline.next()
        staleness = version - job.version
        arrivals.append((job.finish_s, job.client_id, staleness, staleness_weight("polynomial", staleness, a=0.5)))
        version += 1  # buffer 1: every arrival makes a version
        if (client := next(script, None)) is not None:
            assert client not in timeline.busy()
            timeline.start(client, version, job.finish_s, duration[client])
    assert [a[:3] for a in arrivals] == [(3.0, 0, 0), (4.0, 2, 0), (5.0, 1, 2), (6.0, 2, 0), (7.0, 0, 2)]
    assert [a[3] for a in arrivals] == pytest.approx([1, 1, 3 ** -0.5, 1, 3 ** -0.5])


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
    ({"mode": "async", "availability_trace": "trace.json"}, "simulation.availability_trace: is not supported"),
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
