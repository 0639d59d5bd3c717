"""Faults in the engine, for real: a Ray worker killed mid-run, then Ray's raylet killed mid-run.

Each run joins a Ray head of its own on 127.0.0.1 (:func:`test_ray_cluster.started_head`),
and the test SIGKILLs one of that cluster's processes once round 1 is logged.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from test_ray_cluster import cluster_processes, started_head

from inprocess import sets

pytestmark = pytest.mark.e2e

ROUNDS = 4
CLIENTS = 4
# every client always online and never dropping out, trained and evaluated every round: a failure is the kill's
TINY = ["rounds=4", "eval_every=1", f"data.num_clients={CLIENTS}", "strategy.fraction_train=1.0",
        "strategy.fraction_evaluate=1.0", "training.local_epochs=1", "personalisation.epochs=1",
        *[f"tiers.{i}.{key}={value}" for i in range(3) for key, value in (("availability", 1.0),
                                                                           ("failure_rate", 0.0))]]


def _name(pid: int) -> str:
    """A process's title (Ray's workers retitle themselves ``ray::ClientAppActor``)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")


def _children(pids: set[int]) -> set[int]:
    """The live children of ``pids``."""
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) in pids and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def _run_and_kill(temp: Path, address: str, out: Path, victim: str) -> tuple[subprocess.CompletedProcess, int]:
    """``fl-ee run`` on the cluster; after round 1, SIGKILL the raylet or a child of it whose title matches ``victim``.

    Returns the finished run and the rounds logged when the kill was sent.
    """
    command = [sys.executable, "-m", "fl_ee.cli", "run", "--out", str(out),
               *sets([*TINY, f"simulation.ray_address={address}"])]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logged: list[int] = []

    def kill() -> None:
        rounds = out / "rounds.jsonl"
        while run.poll() is None:
            lines = rounds.read_text().count("\n") if rounds.is_file() else 0
            if lines:
                raylets = {pid for pid, _ in cluster_processes(temp) if _name(pid).endswith("/raylet")}
                pids = sorted(p for p in raylets | _children(raylets) if re.search(victim, _name(p)))
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    logged.append(lines)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    try:
        stdout, stderr = run.communicate(timeout=240)
    finally:
        run.kill()
    killer.join()
    assert logged, f"nothing matching {victim} was killed: {stderr}"
    return subprocess.CompletedProcess(command, run.returncode, stdout, stderr), logged[0]


@pytest.fixture
def head():
    """A Ray head of this test's own on 127.0.0.1: its temp dir and address."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths must stay short
    with started_head(temp) as address:
        yield temp, address


def test_a_killed_worker_costs_its_client_in_one_round_and_is_replaced(head, tmp_path):
    out = tmp_path / "run"
    done, logged = _run_and_kill(*head, out, victim=r"^ray::ClientAppActor")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "ActorDiedError" not in done.stderr, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "Ray worker" in line]
    assert len(warnings) == 1, done.stderr
    said = re.fullmatch(r"fl-ee: warning: a Ray worker died in round (\d+) \(1 client failed\); replaced", warnings[0])
    assert said, warnings
    lost = int(said.group(1))
    assert logged < lost < ROUNDS  # in a round after the kill, and a later round to check
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    for record in records:
        failed = [c["client_id"] for c in record["clock"]["clients"] if c["outcome"] == "failed"]
        failed += [int(c) for c in record["evaluate"].get("failed", {})]
        assert len(failed) == (record["round"] == lost), (record["round"], failed)
        if record["round"] > lost:  # the pool is whole again: every client trained and evaluated
            assert [c["outcome"] for c in record["clock"]["clients"]] == ["ok"] * CLIENTS
            assert record["evaluate"]["clients"] == list(range(CLIENTS))
    errors = (out / "client-errors.log").read_text()
    assert errors.count("--- round") == 1 and f"--- round {lost}, " in errors
    assert "the Ray worker (actor" in errors and "ActorDiedError" in errors


def test_losing_the_raylet_ends_the_run_in_one_line_naming_resume(head, tmp_path):
    out = tmp_path / "run"
    done, logged = _run_and_kill(*head, out, victim=r"/raylet$")
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    kept = (out / "rounds.jsonl").read_text().count("\n")
    assert kept >= logged
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"fl-ee: error: Ray stopped under the run \(.+\); {kept} finished rounds? kept in "
                        rf"{re.escape(str(out))}; `fl-ee resume {re.escape(str(out))}` continues", last), done.stderr
