"""benchmarks/pfl_peer.py without pfl: the workload it gives fl-ee, its fit, and pfl kept out of the package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.pfl_peer import WORKLOADS, split, timed_rounds, workload_config
from fl_ee.core.config import config_from_dict
from strategies.registry import build_strategy

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_sampled_client_trains_the_whole_network(name):
    workload = WORKLOADS[name]
    cfg = config_from_dict(workload_config(workload, 9, ROOT / "data"))
    (tier,) = cfg.tiers
    assert tier.depth == cfg.model.exit_count == 4 and tier.width == 1.0
    assert (tier.availability, tier.failure_rate, tier.speed_sigma) == (1.0, 0.0, 0.0)
    assert cfg.simulation.straggler_policy == "wait" and cfg.simulation.deadline_s == 0
    assert (cfg.training.distillation, cfg.personalisation.mode, cfg.training.momentum) == ("none", "none", 0.0)
    strategy = build_strategy(cfg)
    assert strategy.sample_size(cfg.strategy.fraction_train, workload.clients) == workload.per_round
    assert strategy.sample_size(cfg.strategy.fraction_evaluate, workload.clients) == 0  # the global model only
    assert cfg.eval_every == cfg.rounds  # evaluated after the last round alone


def test_split_recovers_the_cost_per_client_and_per_step():
    # 20 ms a client, 10 ms a step: 10 clients x 15 steps = 1.7 s; 50 clients x 2 steps = 2.0 s
    fitted = split([{"s_per_round": 1.7, "clients": 10, "steps": 150},
                    {"s_per_round": 2.0, "clients": 50, "steps": 100}])
    assert fitted == {"ms_per_client_beyond_steps": 20.0, "ms_per_sgd_step": 10.0}


def test_no_package_imports_pfl_research():
    """pfl is the ``bench`` extra only (fl_ee.learning.pfl, the personalised-FL baselines, is another thing)."""
    statement = re.compile(r"^\s*(?:import|from)\s+pfl\b", re.MULTILINE)
    found = [str(path.relative_to(ROOT)) for package in ("fl_ee", "strategies", "partitions", "sims")
             for path in (ROOT / package).rglob("*.py") if statement.search(path.read_text())]
    assert found == []
    assert statement.search("import numpy\n    from pfl.metrics import Weighted\n")  # what it looks for
    assert not statement.search("from fl_ee.learning.pfl import ditto\nimport pflx\n")


def test_the_timed_rounds_leave_out_the_first_two_and_the_last():
    # rounds end at 5, 6, 8, 9.5, 10.5, 14: rounds 3-5 took 2, 1.5 and 1 s; round 6 held the final evaluation
    assert timed_rounds([5.0, 6.0, 8.0, 9.5, 10.5, 14.0]) == [2.0, 1.5, 1.0]
