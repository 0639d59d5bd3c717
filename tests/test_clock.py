"""The virtual clock's pure parts against hand-computed values."""

import numpy as np
import pytest

from fl_ee.core.config import config_from_dict
from fl_ee.core.metrics import round_time_stats, straggler_summary, time_to_accuracy
from fl_ee.models import EarlyExitNet, ModelSpec
from sims.clock import LATE, OK, client_time, presence, settle, speed_factors, transfer_seconds
from sims.emulator import client_times
from strategies import ClientInfo


def test_transfer_seconds():
    assert transfer_seconds(1_000_000, 8.0) == pytest.approx(1.0)  # 8 Mbit over 8 Mbit/s


def _times(personalisation: str, frozen: bool = False, **training):
    raw = {
        "rounds": 3,
        "model": {"exit_head": "linear"},
        "training": {"local_epochs": 2, **training},
        "personalisation": {"mode": personalisation, "epochs": 1},
        "tiers": [{"name": "t", "share": 1.0, "depth": 1, "compute_gflops": 1.0, "download_mbps": 1.0,
                   "upload_mbps": 0.5}],
    }
    model = EarlyExitNet(ModelSpec(1, 8, 8, 10, width=16, exit_head="linear"))
    return client_times(config_from_dict(raw), model, [ClientInfo(1, 0, "t", 1, num_train=10, num_test=3)], frozen)[0]


STAGE, HEAD = 2 * 64 * 1 * 16 * 9, 2 * 16 * 10  # depth 1 below: conv 3x3 at 8x8 -> 16 ch; linear 16 -> 10
HEAD_BYTES = (16 * 10 + 10) * 4


def test_each_mode_and_scheme_is_charged_its_own_work_by_hand():
    shared = 3 * (STAGE + HEAD) * 10 * 2  # end to end: 3 x forward x 10 samples x 2 epochs
    personal = 3 * HEAD * 10 * 1  # heads over frozen features, 1 personal epoch
    for mode in ("none", "finetune"):  # fine-tuning happens before evaluation, outside the training round
        assert _times(mode).compute_s == pytest.approx(shared / 1e9)
    assert _times("exits").compute_s == pytest.approx((shared + STAGE * 10 + personal) / 1e9)
    teacher = HEAD * 10  # self-distill: the deepest global head's forward pass gives the soft targets
    assert _times("self-distill").compute_s == pytest.approx((shared + STAGE * 10 + personal + teacher) / 1e9)
    # ic-only, frozen: one backbone pass serves both steps; heads trained 2 + 1 epochs; only the head goes up
    ic = dict(scheme="ic-only", backbone_rounds=1)
    frozen = _times("exits", frozen=True, **ic)
    assert frozen.compute_s == pytest.approx((STAGE * 10 + 3 * HEAD * 10 * 2 + personal) / 1e9)
    assert frozen.upload_s == pytest.approx(HEAD_BYTES * 8 / 0.5e6)
    assert frozen.download_s == _times("exits", **ic).download_s  # the whole slice still comes down
    assert _times("none", frozen=True, **ic).compute_s == pytest.approx((STAGE * 10 + 3 * HEAD * 10 * 2) / 1e9)


def test_client_times_match_a_hand_computed_submodel():
    # depth 1 of an 8x8 single-channel CNN with a linear head, 16 channels, 10 classes
    stage, head = 2 * 64 * 1 * 16 * 9, 2 * 16 * 10  # conv 3x3 at 8x8 -> 16 ch; linear 16 -> 10
    shared = 3 * (stage + head) * 10 * 2  # 3 x forward x 10 samples x 2 epochs
    personal = stage * 10 + 3 * head * 10 * 1  # frozen backbone pass + heads trained 1 epoch
    params = (16 * 9 + 16) + (16 + 16) + (16 * 10 + 10)  # conv, GroupNorm, linear
    t = _times("exits")
    assert t.compute_s == pytest.approx((shared + personal) / 1e9)
    assert t.download_s == pytest.approx(params * 4 * 8 / 1e6)
    assert t.upload_s == pytest.approx(params * 4 * 8 / 0.5e6)
    assert t.total_s == pytest.approx(t.download_s + t.compute_s + t.upload_s)
    assert _times("none").compute_s == pytest.approx(shared / 1e9)  # exactly 3 x forward x samples x epochs


def test_client_time_phases():
    t = client_time(down_bytes=2e6, up_bytes=1e6, flops=5e9, compute_gflops=10, download_mbps=16, upload_mbps=4)
    assert (t.download_s, t.compute_s, t.upload_s) == pytest.approx((1.0, 0.5, 2.0))


def test_settle_wait_deadline_overselect_by_hand():
    times = {1: 3.0, 2: 10.0, 3: 1.0, 4: 3.0}
    outcomes, length = settle(times, "wait", 0.0, keep=2)
    assert set(outcomes.values()) == {OK} and length == 10.0
    outcomes, length = settle(times, "deadline", 5.0, keep=2)
    assert outcomes == {1: OK, 2: LATE, 3: OK, 4: OK} and length == 5.0
    outcomes, length = settle({1: 3.0, 3: 1.0}, "deadline", 5.0, keep=2)
    assert length == 3.0  # everyone in before the deadline: the round ends with the last reply
    outcomes, length = settle(times, "overselect", 0.0, keep=2)
    assert outcomes == {1: OK, 2: LATE, 3: OK, 4: LATE} and length == 3.0  # tie 1 vs 4 goes to the lower id
    assert settle({}, "wait", 0.0, keep=2) == ({}, 0.0)


def test_presence_draws_are_seeded_and_follow_rates():
    assert presence(3, 0.7, 0.2, seed=1, server_round=4) == presence(3, 0.7, 0.2, seed=1, server_round=4)
    assert not presence(3, 0.0, 0.0, 1, 1).available
    always = presence(3, 1.0, 1.0, 1, 1)
    assert always.available and always.fails and 0 <= always.fail_at < 1
    online = np.mean([presence(c, 0.3, 0.0, 0, r).available for c in range(50) for r in range(20)])
    assert online == pytest.approx(0.3, abs=0.05)


def test_speed_factors_have_median_one_and_sigma_zero_means_none():
    assert speed_factors([0.0, 0.0], seed=0).tolist() == [1.0, 1.0]
    f = speed_factors([0.6] * 2001, seed=0)
    assert np.median(f) == pytest.approx(1.0, abs=0.08) and f.std() > 0.3


def test_round_time_stats_by_hand():
    assert round_time_stats([1.0, 2.0, 3.0, 4.0, 10.0]) == {"p50": 3.0, "p90": pytest.approx(7.6), "max": 10.0}
    assert round_time_stats([]) == {"p50": None, "p90": None, "max": None}


def test_straggler_summary_by_hand():
    rounds = [
        {"a": {"sampled": 2, "ok": 1, "late": 1, "unavailable": 0, "failed": 0},
         "b": {"sampled": 1, "ok": 0, "late": 0, "unavailable": 1, "failed": 0}},
        {"a": {"sampled": 1, "ok": 0, "late": 0, "unavailable": 0, "failed": 1},
         "b": {"sampled": 0, "ok": 0, "late": 0, "unavailable": 0, "failed": 0}},
    ]
    s = straggler_summary(rounds, [2.0, 4.0], [0.5, 0.25])
    assert s["late_fraction"] == pytest.approx(1 / 4)
    assert s["dropped_updates"] == 2 and s["unavailable"] == 1
    assert s["participation_by_tier"] == {"a": pytest.approx(1 / 3), "b": 0.0}
    assert s["round_time_s"]["max"] == 4.0 and s["wasted_compute_s"] == 0.75
    never = straggler_summary([{"c": {"sampled": 0, "ok": 0}}], [0.0], [0.0])
    assert never["participation_by_tier"] == {"c": None} and never["late_fraction"] == 0.0


def test_time_to_accuracy():
    points = [(10.0, 0.5), (20.0, None), (30.0, 0.81), (40.0, 0.9)]
    assert time_to_accuracy(points, 0.8) == 30.0
    assert time_to_accuracy(points, 0.95) is None
    assert time_to_accuracy(points, 0.0) is None  # no target set
