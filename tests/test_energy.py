"""Energy on the virtual clock: one client by hand, the round's record, the run's summary."""

import pytest
from test_traces import BYTES, FLOPS, emulator_of

from fl_ee.core.config import config_from_dict
from fl_ee.core.metrics import energy_summary
from sims.clock import FAILED, OK, UNAVAILABLE, ClientTime, Power, energy
from sims.devices import DEVICES

POWER = {"training_w": 2.0, "idle_w": 0.5, "radio_up_j_per_mb": 3.0, "radio_down_j_per_mb": 1.0}


def test_energy_of_one_client_round_by_hand():
    t = ClientTime(download_s=1.0, compute_s=4.0, upload_s=2.0)
    # 2 W x 4 s + 0.5 W x (1 + 2) s + 1 J/MB x 3 MB down + 3 J/MB x 0.5 MB up
    assert energy(t, 3e6, 0.5e6, Power(2.0, 0.5, 3.0, 1.0)) == pytest.approx(8.0 + 1.5 + 3.0 + 1.5)


def test_the_emulator_charges_each_client_its_submodels_work_and_bytes(tmp_path):
    emulator, _ = emulator_of(tmp_path, **POWER)
    compute_s, down_s, up_s = FLOPS / 1e9, BYTES * 8 / 1e6, BYTES * 8 / 0.5e6  # 1 GFLOP/s, 1 and 0.5 Mbit/s
    by_hand = 2.0 * compute_s + 0.5 * (down_s + up_s) + 1.0 * BYTES / 1e6 + 3.0 * BYTES / 1e6
    assert by_hand == pytest.approx(0.02429312)  # 0.00112512 + 0.017376 + 0.001448 + 0.004344 J
    assert emulator.times[0].energy_j == pytest.approx(by_hand)


def test_a_rounds_record_prorates_a_dropped_client_and_charges_no_offline_one(tmp_path):
    emulator, roster = emulator_of(tmp_path, {"1": [[0, 0.02]], "2": []}, **POWER)
    clock = emulator.begin(1, roster)
    emulator.settle(clock, [c for c in roster if clock.runs(c)], {}, keep=4)
    assert clock.outcomes == {0: OK, 1: FAILED, 2: UNAVAILABLE, 3: OK}
    full = emulator.times[0].energy_j
    record = emulator.record(clock)
    charged = [entry["energy_j"] for entry in record["clients"]]
    assert charged == pytest.approx([full, full * 0.02 / emulator.times[1].total_s, 0.0, full])
    assert record["energy_by_tier_j"] == {"t": pytest.approx(sum(charged))} and record["energy_j"] == sum(charged)


def test_energy_summary_by_hand():
    rounds = [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 0.0}]
    assert energy_summary(rounds, 0.5) == {"total_j": 6.0, "by_tier_j": {"a": 4.0, "b": 2.0},
                                           "per_accuracy_point_j": 6.0 / 50}
    assert energy_summary(rounds, None)["per_accuracy_point_j"] is None
    assert energy_summary([], 0.0) == {"total_j": 0.0, "by_tier_j": {}, "per_accuracy_point_j": None}


def test_a_device_preset_brings_its_power_figures_and_a_tier_may_override_them():
    cfg = config_from_dict({"tiers": [{"name": "iot", "share": 0.5, "depth": 2, "preset": "iot-board"},
                                      {"name": "pc", "share": 0.5, "depth": 4, "preset": "laptop", "idle_w": 3.0}]})
    iot, pc = cfg.tiers
    assert (iot.training_w, iot.idle_w, iot.radio_up_j_per_mb, iot.radio_down_j_per_mb) == (6.4, 2.7, 3.51, 0.42)
    assert (pc.training_w, pc.idle_w, pc.radio_up_j_per_mb) == (DEVICES["laptop"].training_w, 3.0, 2.27)
