"""The TensorBoard observer: the scalars it writes per round, and one line when TensorBoard is missing."""

import sys

import pytest

from fl_ee.cli import main
from fl_ee.core.config import load_config
from fl_ee.core.errors import UserError
from fl_ee.results.tensorboard import SUBDIR, TensorBoardWriter, tensorboard_observers

ROUND = {
    "round": 3,
    "evaluate": {"personalised": {"mean": 0.5, "by_tier": {"iot": 0.25, "phone": None}},
                 "global": {"by_exit": {"1": 0.3, "2": 0.6}}},
    "clock": {"round_time_s": 2.5, "virtual_time_s": 7.0,
              "by_tier": {"iot": {"sampled": 5, "ok": 1, "late": 1, "failed": 2, "rejected": 1, "unavailable": 0},
                          "phone": {"sampled": 2, "ok": 1, "late": 1, "failed": 0, "rejected": 0, "unavailable": 0}}},
}


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    # values are stored as float32
    return {tag: [(e.step, round(e.value, 6)) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_each_round_becomes_scalars_at_its_step(tmp_path):
    pytest.importorskip("tensorboard")
    writer = TensorBoardWriter(tmp_path)
    writer.after_round(ROUND)
    writer.after_round({"round": 4, "clock": {**ROUND["clock"], "round_time_s": 1.0}})  # no evaluation
    writer.on_end({}, [])
    assert _scalars(tmp_path) == {
        "personalised/mean": [(3, 0.5)], "personalised/tier/iot": [(3, 0.25)],  # a tier without a value: none
        "global/exit1": [(3, 0.3)], "global/exit2": [(3, 0.6)],
        "time/round_s": [(3, 2.5), (4, 1.0)], "time/virtual_s": [(3, 7.0), (4, 7.0)],
        "stragglers/late": [(3, 2), (4, 2)], "stragglers/dropped": [(3, 5), (4, 5)],  # late + failed + rejected
    }


def test_logging_tensorboard_writes_under_the_run_directory(tmp_path):
    pytest.importorskip("tensorboard")
    assert tensorboard_observers(load_config(), tmp_path) == []
    [on] = tensorboard_observers(load_config(None, {"logging.tensorboard": True}), tmp_path)
    assert on.writer.log_dir == str(tmp_path / SUBDIR)
    [given] = tensorboard_observers(load_config(), tmp_path, str(tmp_path / "tb"))
    assert given.writer.log_dir == str(tmp_path / "tb")


def test_without_tensorboard_the_observer_is_one_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    with pytest.raises(UserError, match=r"^logging.tensorboard: TensorBoard is not installed; "
                                        r"pip install 'fl-ee\[tensorboard\]'$"):
        tensorboard_observers(load_config(None, {"logging.tensorboard": True}), tmp_path)


@pytest.mark.e2e  # the CLI's preflight and imports: seconds
def test_without_tensorboard_a_run_stops_in_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    assert main(["run", "--set", "rounds=1", "--set", "data.num_clients=3", "--tensorboard", str(tmp_path / "tb"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "fl-ee: error: logging.tensorboard: TensorBoard is not installed; " \
                      "pip install 'fl-ee[tensorboard]'"
    assert not out.exists()
