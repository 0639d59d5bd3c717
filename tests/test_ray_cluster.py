"""Attaching a simulation to a running Ray cluster (`simulation.ray_address`), on loopback."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray head on 127.0.0.1 in its own process group, stopped (only it) afterwards."""
    ray = Path(sys.executable).parent / "ray"
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    head = subprocess.Popen(
        [str(ray), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = head.communicate(timeout=120)
        assert head.returncode == 0, output
        yield f"127.0.0.1:{port}", Path(temp)
    finally:
        try:
            os.killpg(head.pid, signal.SIGKILL)  # the daemons `ray start` left in its group
        except ProcessLookupError:
            pass
        shutil.rmtree(temp, ignore_errors=True)


def test_a_run_attaches_to_an_existing_ray_cluster(ray_head, tmp_path):
    address, temp = ray_head
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "fl_ee.cli", "run", "--set", "rounds=2", "--set", "eval_every=2",
         "--set", "data.num_clients=4", "--set", f"simulation.ray_address={address}", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "summary.json").read_text())["clients"]["total"] == 4
    drivers = list(temp.glob("session_*/logs/python-core-driver-*.log"))
    assert drivers, "the simulation did not attach to the cluster under test"
