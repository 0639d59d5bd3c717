"""The Python API (``fl_ee.run``, ``load_run``, ``load_sweep``, ``compare``): typed results and data frames."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fl_ee
from fl_ee.api import _literal
from fl_ee.core.config import parse_overrides
from fl_ee.core.errors import UserError
from fl_ee.results.schema import Summary
from inprocess import TINY, run_inprocess


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory) -> dict[int, Path]:
    """The session's tiny run (seed 0) and the same with seed 1, by seed."""
    other = tmp_path_factory.mktemp("api") / "seed-1"
    run_inprocess(other, [*TINY, "seed=1"])
    return {0: tiny_run[2], 1: other}


@pytest.mark.e2e
def test_a_run_reads_back_typed_with_frames_and_figures(runs):
    run = fl_ee.load_run(runs[0])
    raw = json.loads((runs[0] / "summary.json").read_text())
    assert run.finished and run.config.rounds == 2 and run.config.data.num_clients == 6
    assert isinstance(run.summary, Summary)
    assert run.summary.accuracy.personalised.mean == raw["accuracy"]["personalised"]["mean"]
    assert run.summary.accuracy.global_.by_exit == raw["accuracy"]["global"]["by_exit"]
    assert run.summary.model_dump(by_alias=True, mode="json") == raw  # nothing lost, nothing added
    lines = [json.loads(line) for line in (runs[0] / "rounds.jsonl").read_text().splitlines()]
    assert run.rounds["round"].tolist() == [1, 2]
    assert run.rounds["evaluate.personalised.mean"].tolist() == [r["evaluate"]["personalised"]["mean"] for r in lines]
    with (runs[0] / "clients.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert run.clients["client_id"].tolist() == [int(r["client_id"]) for r in rows]
    assert run.clients["tier"].tolist() == [r["tier"] for r in rows]
    figures = run.plots()
    assert "accuracy_rounds" in figures and figures["accuracy_rounds"].axes


@pytest.mark.e2e
def test_compare_gives_one_row_per_setting_and_metric(runs):
    frame = fl_ee.compare(runs[0], runs[1])
    assert set(frame["metric"]) >= {"mean", "worst10", "global_exit4"}
    row = frame[frame["metric"] == "mean"].iloc[0]
    means = [json.loads((runs[s] / "summary.json").read_text())["accuracy"]["personalised"]["mean"]
             for s in (0, 1)]
    assert row["n"] == 2 and row["seeds"] == [0, 1]
    assert row["mean"] == pytest.approx(sum(means) / 2)


def test_bad_paths_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="no run directory at"):
        fl_ee.load_run(tmp_path / "nowhere")
    with pytest.raises(UserError, match="is not a sweep root"):
        fl_ee.load_sweep(tmp_path)
    with pytest.raises(UserError, match="rounds"):
        fl_ee.run(set={"rounds": "x"}, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("value", [0.1, 5, True, "depthfl", [2, 4, 9], "two words", -1e-3, "a,b", "true",
                                   ["x", 1.5], {"trim": 1, "q": "a b"}])
def test_values_reach_the_command_line_as_toml_literals_that_read_back_the_same(value):
    literal = _literal(value)
    assert parse_overrides([f"k={literal}"]) == {"k": value} and "\n" not in literal


def test_import_fl_ee_stays_light():
    code = "import sys, fl_ee; print(sorted(m for m in ('torch', 'flwr', 'ray', 'pandas') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.e2e
def test_the_example_notebook_runs_on_ray():
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    path = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "personalised mean" in text
    assert "Traceback" not in text and "(raylet)" not in text and "WARNING" not in text  # no stray Ray logs
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure rendered
