"""Helpers the benchmarks share: run ``fl-ee`` as a child, watch its rounds, sum the RSS and CPU time of its tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (a thread's children are listed under that thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _pss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _tree(root: int) -> list[int]:
    """A process and all its live descendants."""
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(_children(pid))
    return found


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and its live descendants (Linux /proc)."""
    total = 0
    for pid in _tree(root):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, utime 14, stime 15
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def titled(root: int, title: bytes) -> list[int]:
    """The processes under ``root`` (itself included) whose command line starts with ``title`` (a Ray title)."""
    found = []
    for pid in _tree(root):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title):
                found.append(pid)
        except OSError:
            continue
    return found


def calling(root: int) -> bool:
    """Whether a Ray worker under ``root`` runs a client call now (its title is ``ray::ClientAppActor.run``)."""
    return bool(titled(root, b"ray::ClientAppActor.run"))


def tree_rss_bytes(root: int) -> int:
    """Memory of a process and all its descendants (Linux /proc).

    Sums each process's proportional set size, so libraries the processes share
    (torch, Ray) count once rather than once per process.
    """
    total = 0
    for pid in _tree(root):
        try:
            total += _pss_bytes(pid)
        except OSError:
            continue
    return total


@dataclass
class Watched:
    """What watching one ``fl-ee run`` gave: per-round arrival times and memory."""

    started: float
    ended: float = 0.0
    round_seen_at: dict[int, float] = field(default_factory=dict)  # round -> unix time its line appeared
    rss_at_round: dict[int, int] = field(default_factory=dict)  # round -> tree RSS when its line appeared
    cpu_at_round: dict[int, float] = field(default_factory=dict)  # round -> tree CPU seconds when its line appeared
    first_call_at: float | None = None  # unix time a client call was first seen running on a Ray worker
    peak_rss: int = 0
    returncode: int = 0
    stderr: str = ""


def watch_run(args: list[str], out: Path, poll_s: float = 0.1, memory_every_s: float | None = 2.0) -> Watched:
    """Run ``fl-ee run ARGS --out OUT``; record when each round lands and the tree's memory.

    Round arrivals, and the first client call on a Ray worker, are polled every ``poll_s``;
    memory every ``memory_every_s`` and whenever a round lands, or never with ``None``: a
    reading costs ~0.1 s of CPU, taken from the run being timed on a small machine, so
    timings are measured without it.
    """
    command = [sys.executable, "-m", "fl_ee.cli", "run", *args, "--out", str(out)]
    watched = Watched(started=time.time())
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    pipe = child.stderr
    assert pipe is not None  # stderr=PIPE
    reader = threading.Thread(target=lambda: stderr.append(pipe.read()), daemon=True)
    reader.start()
    rounds_file, last_memory = out / "rounds.jsonl", 0.0
    while child.poll() is None:
        seen = len(rounds_file.read_text().splitlines()) if rounds_file.exists() else 0
        landed = range(len(watched.round_seen_at) + 1, seen + 1)
        now = time.time()
        if watched.first_call_at is None and calling(child.pid):
            watched.first_call_at = now
        for rnd in landed:
            watched.round_seen_at[rnd] = now
            watched.cpu_at_round[rnd] = tree_cpu_seconds(child.pid)
        if memory_every_s is not None and (landed or now - last_memory >= memory_every_s):
            rss, last_memory = tree_rss_bytes(child.pid), now
            watched.peak_rss = max(watched.peak_rss, rss)
            for rnd in landed:
                watched.rss_at_round[rnd] = rss
        time.sleep(poll_s)
    reader.join()
    watched.ended, watched.returncode, watched.stderr = time.time(), child.returncode, "".join(stderr)
    if watched.returncode != 0:
        raise SystemExit(f"fl-ee run failed ({watched.returncode}): {watched.stderr.strip()[-2000:]}")
    return watched


def read_rounds(out: Path) -> list[dict]:
    """The run's ``rounds.jsonl`` records."""
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
