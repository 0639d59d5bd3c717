"""The preflight: every bad input ends in one line and exit 2 before Ray starts or a run directory exists."""

import sys
from pathlib import Path

import pytest

from fl_ee.cli import main
from fl_ee.core.config import load_config
from fl_ee.core.errors import UserError
from fl_ee.federation.preflight import preflight
from inprocess import sets


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data.num_clients=100000"],
         "data.num_clients: 100000 clients need 2 samples each, but the dataset has 1347 training samples; "
         "use at most 673 clients"),
        (["data.partitioner=shards", "data.shards_per_client=11"],
         "data.shards_per_client: must be at most the number of classes (10)"),
        (["data.name=mnist", "data.root=/nonexistent"], "data.root: mnist not found under '/nonexistent'"),
        (["strategy.name=nosuch"], "strategy.name: unknown strategy 'nosuch'"),
        (["strategy.options.eta=0.1"], "strategy.options.eta: unknown option for depthfl"),
    ],
)
def test_bad_runs_stop_in_one_line_before_ray_and_before_a_run_directory(overrides, needle, tmp_path, capsys):
    out = tmp_path / "run"
    args = sets(overrides)
    assert main(["run", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fl-ee: error: {needle}") and err.count("\n") == 1, err
    assert not out.exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_preflight_makes_the_data_root_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = preflight(load_config(None, {"data.root": "data"}))
    assert cfg.data.root == str(tmp_path / "data")


def test_a_dirichlet_split_that_cannot_be_made_names_the_key():
    with pytest.raises(UserError) as info:
        preflight(load_config(None, {"data.num_clients": 600, "data.alpha": 0.01}))
    assert info.value.key == "data.num_clients"


def test_an_unusable_out_is_refused_in_one_line_before_any_data_is_loaded(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.toml").write_text("# the user's own file\n")
    for out, needle in [(mine, "is not empty and holds no fl-ee run"),
                        (Path("/proc/fl-ee-run"), "cannot write run directory /proc/fl-ee-run")]:
        assert main(["run", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert (mine / "config.toml").read_text() == "# the user's own file\n"
