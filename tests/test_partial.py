"""Partial work under a deadline and FedNova's normalisation, by hand."""

import json

import numpy as np
import pytest
import torch
from test_traces import BYTES, FLOPS, emulator_of

from fl_ee.core.config import config_from_dict
from fl_ee.core.errors import UserError
from fl_ee.learning.training import fit, local_steps
from sims.clock import LATE, OK
from strategies import build_strategy
from strategies.aggregation import fednova_rescale, holder_aggregate, weighted_mean


def test_fednova_on_two_clients_with_different_step_counts_by_hand():
    current = {"w": np.zeros(2, dtype=np.float32), "n": np.array(7, dtype=np.int64)}
    updates = [{"w": np.array([2.0, 4.0], dtype=np.float32), "n": np.array(9, dtype=np.int64)},  # 2 steps
               {"w": np.array([3.0, 6.0], dtype=np.float32), "n": np.array(9, dtype=np.int64)}]  # 6 steps
    rescaled = fednova_rescale(updates, [1.0, 1.0], [2, 6], current)
    # tau_eff = (2 + 6) / 2 = 4; changes per step: (1, 2) and (0.5, 1); mean (0.75, 1.5) x 4 = (3, 6)
    new = holder_aggregate(rescaled, [1.0, 1.0], current, lambda k, v, w, c: weighted_mean(v, w))
    np.testing.assert_allclose(new["w"], [3.0, 6.0])
    np.testing.assert_allclose(holder_aggregate(updates, [1.0, 1.0], current,
                                                lambda k, v, w, c: weighted_mean(v, w))["w"], [2.5, 5.0])  # FedAvg
    assert rescaled[0]["n"] == 9 and new["w"].dtype == np.float32  # counters as sent, dtypes kept
    # example weights 3 : 1: tau_eff = (3 x 2 + 6) / 4 = 3; (0.75 x 1 + 0.25 x 0.5) x 3 = 2.625
    weighted = fednova_rescale(updates, [3.0, 1.0], [2, 6], current)
    np.testing.assert_allclose(weighted_mean([u["w"] for u in weighted], [3.0, 1.0]), [2.625, 5.25], rtol=1e-6)
    # equal steps: FedNova is FedAvg
    same = fednova_rescale(updates, [1.0, 1.0], [5, 5], current)
    np.testing.assert_allclose(same[1]["w"], updates[1]["w"])


def test_fednova_on_a_width_sliced_update_takes_the_change_from_its_corner():
    current = {"w": np.arange(4.0).reshape(2, 2)}
    rescaled = fednova_rescale([{"w": np.array([[2.0]])}, {"w": np.ones((2, 2))}], [1.0, 1.0], [1, 3], current)
    assert rescaled[0]["w"].tolist() == [[4.0]]  # 0 + (2 - 0) x tau_eff 2 / 1


def test_fednova_is_a_strategy_option_and_q_fedavg_refuses_it():
    cfg = config_from_dict({"strategy": {"options": {"fednova": True}}})
    assert build_strategy(cfg).fednova is True and build_strategy(config_from_dict({})).fednova is False
    with pytest.raises(UserError, match="strategy.options.fednova: q-FedAvg"):
        build_strategy(config_from_dict({"strategy": {"name": "qfedavg", "options": {"fednova": True}}}))
    with pytest.raises(UserError, match="strategy.options.fednova: expected true or false"):
        build_strategy(config_from_dict({"strategy": {"options": {"fednova": 1}}}))


def test_local_training_stops_after_max_steps_and_the_count_is_deterministic():
    cfg = config_from_dict({"training": {"local_epochs": 2, "batch_size": 4}}).training
    assert local_steps(10, cfg) == 6 and local_steps(10, cfg, 4) == 4 and local_steps(10, cfg, 9) == 6

    def run(max_steps):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.zeros(3))
        steps = []
        x = torch.arange(30.0).reshape(10, 3)
        fit([w], cfg, 2, 10, torch.Generator().manual_seed(1), lambda idx: ((x[idx] - w) ** 2).mean(),
            after_step=lambda: steps.append(1), max_steps=max_steps)
        return len(steps), w.detach().clone()

    (four, w4), (again, w4_again), (all_, _) = run(4), run(4), run(None)
    assert (four, again, all_) == (4, 4, 6) and torch.equal(w4, w4_again)


def test_partial_work_fits_the_steps_before_the_deadline_by_hand(tmp_path):
    down_s, up_s, compute_s = BYTES * 8 / 1e6, BYTES * 8 / 0.5e6, FLOPS / 1e9  # 10 samples, batch 2: 5 steps
    deadline = down_s + up_s + 0.0003  # room for 0.0003 / (compute_s / 5) = 2.67 steps: 2
    emulator, roster = emulator_of(tmp_path, **{"training_w": 2.0})
    cfg = emulator.cfg.model_copy(update={
        "training": emulator.cfg.training.model_copy(update={"batch_size": 2}),
        "simulation": emulator.cfg.simulation.model_copy(update={"straggler_policy": "deadline",
                                                                 "deadline_s": deadline, "partial_work": True})})
    emulator.cfg = cfg
    clock = emulator.begin(1, roster[:1])
    assert clock.steps == {0: 2}
    assert clock.times[0].compute_s == pytest.approx(compute_s * 2 / 5)
    assert clock.times[0].energy_j == pytest.approx(emulator.times[0].energy_j - 2.0 * compute_s * 3 / 5)
    emulator.settle(clock, roster[:1], {}, keep=1)
    assert clock.outcomes == {0: OK} and emulator.record(clock)["clients"][0]["local_steps"] == 2
    emulator.cfg = cfg.model_copy(update={"simulation": cfg.simulation.model_copy(update={"deadline_s": 1.0})})
    assert emulator.begin(1, roster[:1]).steps == {}  # all 5 fit
    emulator.cfg = cfg.model_copy(update={"simulation": cfg.simulation.model_copy(update={"deadline_s": down_s})})
    assert emulator.begin(1, roster[:1]).steps == {}  # none fits: late, as without partial work


def test_partial_work_needs_a_deadline():
    with pytest.raises(UserError, match="simulation.partial_work: needs straggler_policy = deadline"):
        config_from_dict({"simulation": {"partial_work": True}})


@pytest.mark.e2e
def test_a_tiny_run_with_partial_work_and_fednova(tmp_path):
    from inprocess import TINY, run_inprocess

    # client 3 (iot): 2.068 s of transfers and 6 steps of 0.0118 s: 2 fit before 2.1 s; every other client fits
    run_inprocess(tmp_path / "run", [*TINY, "strategy.fraction_train=1.0", "simulation.straggler_policy='deadline'",
                                     "simulation.deadline_s=2.1", "simulation.partial_work=true",
                                     "strategy.options.fednova=true"])
    clocks = [json.loads(line)["clock"] for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    partial = [(e["client_id"], e["local_steps"], e["outcome"]) for c in clocks for e in c["clients"]
               if "local_steps" in e]
    assert partial == [(3, 2, OK), (3, 2, OK)]
    assert not [e for c in clocks for e in c["clients"] if e["outcome"] == LATE]  # (some are offline or drop)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["accuracy"]["personalised"]["mean"] > 0
