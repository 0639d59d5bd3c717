"""End to end through the real CLI: Flower ServerApp/ClientApp on the Ray backend, on digits."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from fl_ee.core.config import load_config
from inprocess import run_inprocess

pytestmark = pytest.mark.e2e

TINY = [
    "--set", "rounds=3",
    "--set", "eval_every=2",
    "--set", "data.num_clients=6",
    "--set", "strategy.fraction_train=1.0",
]


def fl_ee(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fl_ee.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    done = fl_ee("run", *TINY, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "Personalised accuracy" in done.stdout and "global" in done.stdout
    return out


def test_run_directory_holds_every_file(run_dir):
    assert {p.name for p in run_dir.iterdir()} >= {"config.toml", "rounds.jsonl", "clients.csv", "summary.json"}
    resolved = load_config(str(run_dir / "config.toml"))
    assert resolved.rounds == 3 and resolved.data.num_clients == 6
    assert tomllib.loads((run_dir / "config.toml").read_text())["data"]["name"] == "digits"


def test_rounds_log_one_line_per_round_with_evaluations(run_dir):
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [("evaluate" in r) for r in rounds] == [False, True, True]  # every 2 rounds, and the last
    clock = rounds[0]["clock"]
    assert [c["client_id"] for c in clock["clients"]] == list(range(6))  # fraction_train = 1
    outcomes = {c["outcome"] for c in clock["clients"]}
    assert outcomes <= {"ok", "unavailable", "failed"}  # the quickstart devices are not always online
    assert rounds[2]["clock"]["virtual_time_s"] == pytest.approx(sum(r["clock"]["round_time_s"] for r in rounds))
    assert set(rounds[2]["evaluate"]["global"]["by_exit"]) == {"1", "2", "3", "4"}


def test_clients_csv_has_a_row_per_client_with_its_depth_slice(run_dir):
    with open(run_dir / "clients.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["client_id"]) for r in rows] == list(range(6))
    depth_of = {t.name: t.depth for t in load_config(None).tiers}
    for row in rows:
        depth = int(row["depth"])
        assert depth == depth_of[row["tier"]]
        held = [row[f"accuracy_exit{i}"] for i in range(1, 5)]
        assert all(v != "" for v in held[:depth]) and all(v == "" for v in held[depth:])
        assert int(row["num_train"]) > int(row["num_test"]) > 0
        assert float(row["expected_flops"]) > 0


def test_summary_accuracy_beats_chance_clearly(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    personalised = summary["accuracy"]["personalised"]
    assert personalised["mean"] > 0.4  # 10 classes: chance is 0.1
    assert set(personalised["by_tier"]) == {"iot", "phone", "laptop"}
    assert max(summary["accuracy"]["global"]["by_exit"].values()) > 0.4
    assert summary["virtual_time_s"] > 0 and summary["time_to_accuracy_s"] is None  # no target set
    stragglers = summary["stragglers"]
    assert set(stragglers["round_time_s"]) == {"p50", "p90", "max"}
    assert set(stragglers["participation_by_tier"]) == {"iot", "phone", "laptop"}


def test_same_seed_gives_identical_summary(run_dir, tmp_path):
    # the same config again, in another process, with other node ids and another reply order:
    # the in-process grid (tests/inprocess.py) runs the same ClientApp and loop without Ray
    run_inprocess(tmp_path / "again", TINY[1::2], seed=7)
    assert (tmp_path / "again" / "summary.json").read_text() == (run_dir / "summary.json").read_text()
    assert (tmp_path / "again" / "clients.csv").read_text() == (run_dir / "clients.csv").read_text()


def test_a_finished_run_is_never_overwritten(run_dir):
    before = (run_dir / "summary.json").read_text()
    done = fl_ee("run", *TINY, "--out", str(run_dir))
    assert done.returncode == 2 and "already holds a finished run" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert (run_dir / "summary.json").read_text() == before
