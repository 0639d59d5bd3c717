"""Straggler policies on short real runs of the `stragglers` preset (tiers 10x apart in speed).

The virtual clock and the policies are the server's (``sims.clock``, ``fl_ee.federation.server``), so the runs
go through the in-process grid (the real ClientApp, no Ray), which gives a Ray run's results byte for byte
(tests/test_inprocess.py); Ray itself is exercised by the other end-to-end tests.
"""

import json

import pytest

from fl_ee.core.config import load_config
from inprocess import run_inprocess

pytestmark = pytest.mark.e2e


POLICIES = ("wait", "deadline", "overselect")


@pytest.fixture(scope="module")
def clocks(tmp_path_factory) -> dict[str, list[dict]]:
    """The clock records of one real run per policy."""
    tmp = tmp_path_factory.mktemp("stragglers")
    for policy in POLICIES:
        run_inprocess(tmp / policy, [f"simulation.straggler_policy={policy}", "rounds=4", "eval_every=4"],
                      "stragglers", checkpoints=False)
    return {policy: [json.loads(line)["clock"] for line in (tmp / policy / "rounds.jsonl").read_text().splitlines()]
            for policy in POLICIES}


def test_wait_lets_the_slowest_sampled_client_set_the_round_time(clocks):
    for rnd in clocks["wait"]:
        assert all(c["outcome"] == "ok" for c in rnd["clients"])
        slowest = max(rnd["clients"], key=lambda c: c["time_s"])
        assert rnd["round_time_s"] == pytest.approx(slowest["time_s"])
        if any(c["tier"] == "slow" for c in rnd["clients"]):
            assert slowest["tier"] == "slow"
    assert clocks["wait"][-1]["virtual_time_s"] == pytest.approx(sum(r["round_time_s"] for r in clocks["wait"]))


def test_deadline_drops_mostly_the_slow_tiers_updates(clocks):
    deadline = load_config("stragglers").simulation.deadline_s
    late = [c for rnd in clocks["deadline"] for c in rnd["clients"] if c["outcome"] == "late"]
    assert late and all(c["time_s"] > deadline for c in late)
    assert sum(c["tier"] == "slow" for c in late) > len(late) / 2
    assert all(rnd["round_time_s"] <= deadline for rnd in clocks["deadline"])
    assert sum(rnd["wasted_compute_s"] for rnd in clocks["deadline"]) > 0  # late work is counted as wasted


def test_overselect_keeps_rounds_near_the_fast_tiers(clocks):
    cfg = load_config("stragglers")
    keep = round(cfg.strategy.fraction_train * cfg.data.num_clients)
    mean = lambda rounds: sum(r["round_time_s"] for r in rounds) / len(rounds)  # noqa: E731
    assert mean(clocks["overselect"]) < 0.8 * mean(clocks["wait"])
    for rnd in clocks["overselect"]:
        ok = [c for c in rnd["clients"] if c["outcome"] == "ok"]
        assert len(rnd["clients"]) > keep and len(ok) == keep  # over-sampled, first k kept
        assert max(c["time_s"] for c in ok) <= min(c["time_s"] for c in rnd["clients"] if c["outcome"] == "late")
