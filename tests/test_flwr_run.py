"""`flwr run .`: the same apps under Flower's own CLI and a local SuperLink."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fl_ee.core.config import load_config
from fl_ee.federation.server import from_run_config

REPO = Path(__file__).resolve().parents[1]


def test_run_config_maps_onto_the_same_config():
    overrides = "rounds=3 data.alpha=0.1 tiers.0.depth=1"
    cfg, out = from_run_config({"preset": "quickstart", "out": "/tmp/x", "set": overrides})
    assert out == Path("/tmp/x")
    assert cfg == load_config("quickstart", {"rounds": 3, "data.alpha": 0.1, "tiers.0.depth": 1})
    cfg, out = from_run_config({"preset": "quickstart", "out": "", "set": ""})
    assert cfg == load_config(None) and out.parent == Path("runs")


@pytest.mark.e2e
def test_flwr_run_runs_a_simulation(tmp_path):
    flwr = Path(sys.executable).parent / "flwr"
    if not flwr.exists():
        pytest.skip("flwr CLI not installed beside this interpreter")
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{flwr.parent}{os.pathsep}{os.environ['PATH']}",
    }
    out = tmp_path / "run"
    command = [
        str(flwr), "run", ".", "--stream",
        "--run-config", f"out='{out}' set='rounds=2 eval_every=2 data.num_clients=4 strategy.fraction_train=1.0'",
        "--federation-config", "num-supernodes=4 client-resources-num-cpus=1",
    ]
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert (out / "summary.json").exists(), done.stdout + done.stderr
    finally:  # stop the SuperLink this test started (it is keyed to this FLWR_HOME)
        found = subprocess.run(["pgrep", "-f", str(tmp_path / "flwr-home")], capture_output=True, text=True)
        for pid in found.stdout.split():
            os.kill(int(pid), signal.SIGTERM)
        time.sleep(1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["clients"]["total"] == 4
    assert summary["accuracy"]["personalised"]["mean"] > 0.2  # 10 classes: chance is 0.1
