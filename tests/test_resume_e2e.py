"""Nothing lost: a real ``fl-ee run`` (Ray) killed with SIGKILL at a random round, then ``fl-ee resume``.

The resumed run must end with the same ``summary.json`` and ``clients.csv``, byte for
byte, as an uninterrupted run of the same config (which runs beside it). Every
subprocess starts in its own session and its whole process group (the CLI, Ray's GCS,
raylet and workers) is killed afterwards, so no Ray process outlives a test.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from inprocess import run_inprocess

pytestmark = pytest.mark.e2e

ROUNDS = 5
SMALL = [
    "--set", f"rounds={ROUNDS}", "--set", "eval_every=2", "--set", "data.num_clients=4",
    "--set", "training.local_epochs=1", "--set", "training.batch_size=64", "--set", "personalisation.epochs=1",
    "--set", "model.width=8",
]
TIMEOUT_S = 300


def _group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


@contextmanager
def fl_ee(*args: str) -> Iterator[subprocess.Popen]:
    """``fl-ee ARGS`` in a new session; its whole process group is SIGKILLed on the way out."""
    process = subprocess.Popen([sys.executable, "-m", "fl_ee.cli", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield process
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.communicate()
        deadline = time.monotonic() + 10
        while _group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_members(process.pid), "processes of the run outlived it"


def _finish(process: subprocess.Popen) -> str:
    _, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, err
    return err


def _lines(path: Path) -> int:
    try:
        return sum(1 for line in (path / "rounds.jsonl").read_text().splitlines() if line.endswith("}"))
    except FileNotFoundError:
        return 0


# one strategy on Ray: each server state's resume (Adam's moments, momentum, FedDyn's h and g_prev, ...) is
# checked byte for byte on the in-process grid (tests/test_resume.py), which equals a Ray run (tests/test_inprocess.py)
@pytest.mark.parametrize("strategy", ["depthfl"])
def test_a_run_killed_at_a_random_round_resumes_to_the_same_results(tmp_path, strategy):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    kill_after = rng.randint(1, ROUNDS - 2)  # rounds logged before the kill; then within a round: one is left
    why = f"strategy {strategy}, random seed {seed}, killed after {kill_after} logged rounds"
    config = [*SMALL, "--set", f"strategy.name={strategy}"]
    reference, run = tmp_path / "reference", tmp_path / "run"

    # the victim's clients also sleep their simulated time (pacing changes no result), so that
    # its rounds are long enough to be killed in, however busy the machine
    paced = ["--set", "simulation.pace=true", "--set", "simulation.time_scale=2.0"]
    with fl_ee("run", *config, *paced, "--out", str(run)) as victim:
        # the uninterrupted run: the same ClientApp and loop in this process (byte-identical to a Ray run,
        # tests/test_inprocess.py), while the victim starts
        run_inprocess(reference, config[1::2])
        deadline = time.monotonic() + TIMEOUT_S
        while _lines(run) < kill_after:
            assert victim.poll() is None, f"{why}: the run ended before it was killed: {victim.stderr.read()}"
            assert time.monotonic() < deadline, why
            time.sleep(0.02)
        walls = [0.0] + [json.loads(line)["wall_s"] for line in (run / "rounds.jsonl").read_text().splitlines()]
        last = walls[kill_after] - walls[kill_after - 1] if kill_after > 1 else 0.6  # round 1 includes start-up
        time.sleep(rng.uniform(0, last / 2))  # into the next round: clients may have saved its exits
        assert victim.poll() is None, f"{why}: the run ended before it was killed"
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        why += f" (at {_lines(run)})"

    assert not (run / "summary.json").exists(), why
    with fl_ee("resume", str(run), "--set", "simulation.pace=false") as resumed:
        err = " ".join(_finish(resumed).split())  # rich wraps lines
    assert f"resuming {run} after round" in err or "no checkpoint; starting over" in err, why
    for name in ("summary.json", "clients.csv"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), f"{why}: {name} differs"
    logged = [json.loads(line)["round"] for line in (run / "rounds.jsonl").read_text().splitlines()]
    assert logged == list(range(1, ROUNDS + 1)), why
