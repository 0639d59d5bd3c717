"""Attaching a simulation to a running Ray cluster (`simulation.ray_address`), on loopback."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def started_node(temp: Path, *options: str) -> Iterator[None]:
    """A Ray node on 127.0.0.1 (``ray start`` with ``options``), its files under ``temp``, in its own process group.

    Stopped (only it) afterwards, and ``temp`` removed.
    """
    ray = Path(sys.executable).parent / "ray"
    start = subprocess.Popen(
        [str(ray), "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp}", *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = start.communicate(timeout=120)
        assert start.returncode == 0, output
        yield
    finally:
        try:
            os.killpg(start.pid, signal.SIGKILL)  # the daemons `ray start` left in its group
        except ProcessLookupError:
            pass
        shutil.rmtree(temp, ignore_errors=True)


@contextmanager
def started_head(temp: Path, cpus: int = 2) -> Iterator[str]:
    """A Ray head with ``cpus`` CPUs (:func:`started_node`); its address."""
    port = free_port()
    with started_node(temp, "--head", f"--port={port}", f"--num-cpus={cpus}", "--include-dashboard=false"):
        yield f"127.0.0.1:{port}"


@pytest.fixture
def ray_head():
    """A Ray head on 127.0.0.1: its address and its temp dir."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths must stay short
    with started_head(temp) as address:
        yield address, temp


def drivers(session_parent: Path) -> list[Path]:
    """The logs of the drivers that connected to the Ray sessions under ``session_parent``."""
    return list(session_parent.glob("session_*/logs/python-core-driver-*.log"))


def test_a_run_without_an_address_starts_its_own_ray_beside_a_running_cluster(tmp_path):
    """``ray start --head`` writes its address where ``ray.init()`` looks (Ray's temp dir); a run ignores it."""
    base = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        with started_head(base / "ray"):
            assert (base / "ray" / "ray_current_cluster").is_file()  # what ray.init() alone would join
            sessions = set((base / "ray").glob("session_2*"))
            env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(base)}
            done = subprocess.run(
                [sys.executable, "-m", "fl_ee.cli", "run", "--set", "rounds=2", "--set", "eval_every=2", "--set",
                 "data.num_clients=4", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                env=env)
            assert done.returncode == 0, done.stderr
            assert sessions and not any(list(s.glob("logs/python-core-driver-*.log")) for s in sessions)  # not joined
            assert set((base / "ray").glob("session_2*")) - sessions, "the run did not start a Ray of its own"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def cluster_processes(temp: Path) -> set[tuple[int, str]]:
    """``(pid, start time)`` of the live processes whose command line names the cluster's temp dir (GCS, raylet)."""
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            names_temp = str(temp).encode() in (entry / "cmdline").read_bytes()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if names_temp and fields[0] != "Z":
            found.add((int(entry.name), fields[19]))
    return found


@pytest.mark.parametrize("how", ["RAY_ADDRESS"])  # the watchdog is armed either way (sims.backend, sims.engine)
def test_a_killed_run_leaves_the_cluster_it_joined_running(ray_head, tmp_path, how):
    """Only a Ray that fl-ee started dies with it: by ``simulation.ray_address`` or the ``RAY_ADDRESS`` Ray reads."""
    address, temp = ray_head
    cluster = cluster_processes(temp)
    assert {b"gcs_server", b"raylet"} <= {Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].rsplit(b"/")[-1]
                                          for pid, _ in cluster}
    joined = ["--set", f"simulation.ray_address={address}"] if how == "ray_address" else []
    env = dict(os.environ) if joined else dict(os.environ, RAY_ADDRESS=address)
    out = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "fl_ee.cli", "run", "--set", "rounds=30", "--set",
                            "data.num_clients=6", *joined, "--out", str(out)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 150
        while not (out / "rounds.jsonl").is_file() or not (out / "rounds.jsonl").read_text().strip():
            assert run.poll() is None and time.monotonic() < deadline, "round 1 never came"
            time.sleep(0.1)
        assert drivers(temp), "the run did not join the cluster"
    finally:
        run.kill()
        run.wait()
    time.sleep(3)  # a watchdog of the run kills within a second
    assert cluster <= cluster_processes(temp)


def node_id(temp: Path) -> str:
    """The Ray node id of the node whose files are under ``temp``, as its raylet logs it."""
    log = next(temp.glob("session_2*/logs/raylet.out")).read_text()
    return re.search(r"Setting node ID node_id=([0-9a-f]+)", log).group(1)  # type: ignore[union-attr]


def fl_ee_run(out: Path, *options: str) -> None:
    """A tiny run (4 clients, 2 rounds, evaluated in round 2), one client CPU each, into ``out``."""
    done = subprocess.run(
        [sys.executable, "-m", "fl_ee.cli", "run", "--set", "rounds=2", "--set", "eval_every=2", "--set",
         "data.num_clients=4", "--set", "simulation.client_cpus=1", *options, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr


def rounds_without_wall_time(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
            for line in (run / "rounds.jsonl").read_text().splitlines()]


def served_by(run: Path) -> set[str]:
    """The Ray nodes that ran any client call of ``run`` (its ``placement.jsonl``)."""
    lines = [json.loads(line) for line in (run / "placement.jsonl").read_text().splitlines()]
    return {node for line in lines for step in ("train", "evaluate") for node in line.get(step, {})}


def test_a_run_on_two_nodes_uses_both_and_equals_a_run_on_one(tmp_path):
    """A run attaches to a running cluster (``simulation.ray_address``): a head and a second node, one CPU
    each, so one client actor on each. Every call is filed under the node it ran on, both nodes serve, and
    the results are those of a run on a local Ray."""
    head_temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    with started_head(head_temp, cpus=1) as address:
        node_temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        with started_node(node_temp, f"--address={address}", "--num-cpus=1"):
            fl_ee_run(tmp_path / "two", "--set", f"simulation.ray_address={address}")
            nodes = {node_id(head_temp), node_id(node_temp)}
            assert drivers(head_temp), "the simulation did not attach to the cluster under test"
    two = tmp_path / "two"
    placement = [json.loads(line) for line in (two / "placement.jsonl").read_text().splitlines()]
    assert [p["round"] for p in placement] == [1, 2]
    trained = [sorted(c["client_id"] for c in r["clock"]["clients"] if c["outcome"] == "ok")
               for r in rounds_without_wall_time(two)]
    assert [sorted(sum(p["train"].values(), [])) for p in placement] == trained  # each call once
    assert sorted(sum(placement[1]["evaluate"].values(), [])) == [0, 1, 2, 3]
    assert served_by(two) == nodes  # both nodes ran clients, and nothing else did

    fl_ee_run(tmp_path / "one")
    one = tmp_path / "one"
    assert (one / "summary.json").read_text() == (two / "summary.json").read_text()
    assert (one / "clients.csv").read_text() == (two / "clients.csv").read_text()
    assert rounds_without_wall_time(one) == rounds_without_wall_time(two)
    assert len(served_by(one)) == 1  # a local Ray is one node


# ------------------------------------------------------------------------------ a Ray of its own

AHEAD = """
import os, sys, time
sys.path.insert(0, sys.argv[1])  # on the driver's path only, as a user's working directory is
import ray
from benchmarks._proc import titled
from fl_ee.core.config import load_config
from sims.backend import init_ray

init_ray(load_config(None, {}))
raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid


def workers() -> set[int]:
    return set(titled(raylet, b"ray::IDLE"))  # the workers, ready


cpus = int(ray.cluster_resources()["CPU"])
deadline = time.monotonic() + 60
while len(workers()) < cpus and time.monotonic() < deadline:
    time.sleep(0.1)
ahead = workers()


@ray.remote(num_cpus=1)
class Client:
    def where(self):
        import on_the_path
        return os.getpid(), on_the_path.VALUE


placed = ray.get([Client.remote().where.remote() for _ in range(min(len(ahead), cpus))])
print(len(ahead), all(pid in ahead for pid, _ in placed), all(value == "imported" for _, value in placed))
"""


def test_a_ray_of_its_own_hosts_the_clients_in_the_workers_it_started_ahead(tmp_path):
    """Ray starts a worker per CPU ahead; the clients' actors take them (a job runtime_env would have Ray start new
    ones, seconds more before the first round) and import what the driver's path holds."""
    (tmp_path / "on_the_path.py").write_text("VALUE = 'imported'\n")
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(temp)}
    try:
        done = subprocess.run([sys.executable, "-c", AHEAD, str(tmp_path)], capture_output=True, text=True,
                              timeout=180, env=env, cwd=Path(__file__).resolve().parents[1])
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    ahead, taken, imported = done.stdout.split()
    assert int(ahead) >= 1 and taken == "True" and imported == "True"
