"""``fl-ee sweep``: every combination of grid values times every seed, each an ordinary run directory.

A sweep root holds ``<setting>/seed-<s>/`` (a run directory, as ``fl-ee run --out`` makes
it) and ``<setting>/seed-<s>.log`` (that run's output), and ``sweep.json``, rewritten
atomically after each finished run with every setting's statistics over its seeds
(:mod:`fl_ee.groups`). Every combination and seed is validated (config and preflight)
before the first run starts. Each run is a ``fl-ee run`` subprocess, ``--jobs`` at once;
running the same command again skips the finished runs and continues an interrupted
one from its latest checkpoint with ``fl-ee resume`` (which ends with the same results,
byte for byte, as an uninterrupted run, and starts over where no checkpoint was written).
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol
from urllib.parse import quote

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fl_ee.atomic import atomic_write
from fl_ee.checkpoint import config_difference, resumable_config
from fl_ee.config import Config, load_config, parse_overrides
from fl_ee.errors import UserError
from fl_ee.groups import SEED_PREFIX, SWEEP_JSON, Setting, headline
from fl_ee.rundir import ROUNDS, SUMMARY, load_run, to_json
from sims.reaper import die_with_parent

POLL_S = 0.25  # how often running runs are looked at
STOP_WAIT_S = 60.0  # after an interrupt: how long a run may take to stop before it is killed
BASE = "base"  # the one setting of a sweep without --grid


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (a config holds a dict)
class Job:
    """One run of a sweep: its setting, seed, CONFIG and ``--set`` arguments, validated config and run directory."""

    setting: str
    seed: int
    config: str | None
    overrides: tuple[str, ...]
    cfg: Config
    path: Path

    @property
    def log(self) -> Path:
        """Where the run's output goes: ``<setting>/seed-<s>.log``."""
        return self.path.with_name(f"{self.path.name}.log")

    @property
    def finished(self) -> bool:
        """Whether the run directory holds a finished run."""
        return (self.path / SUMMARY).is_file()

    @property
    def started(self) -> bool:
        """Whether the run directory holds a run, finished or not."""
        return (self.path / ROUNDS).is_file()

    def rounds_done(self) -> int:
        """The rounds its ``rounds.jsonl`` holds so far."""
        if self.finished:
            return self.cfg.rounds
        try:
            return min(self.cfg.rounds, (self.path / ROUNDS).read_bytes().count(b"\n"))
        except OSError:
            return 0


# ------------------------------------------------------------------------------ planning


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["strategy.name=depthfl,exclusive", ...]`` as ``{"strategy.name": ["depthfl", "exclusive"]}``.

    Values stay text (``--set`` parses them); an empty grid, a key given twice, a value
    given twice and ``seed`` (the seeds come from ``--seeds``) are refused.
    """
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not sep or not key:
            raise UserError(f"--grid {item!r}: expected KEY=V1,V2,...")
        if not values:
            raise UserError("empty grid: give at least one value, KEY=V1,V2,...", key=f"--grid {key}")
        if key == "seed":
            raise UserError("the seeds of a sweep come from --seeds or --seed-list", key="--grid seed")
        if key in grid:
            raise UserError("given twice; list all its values in one --grid", key=f"--grid {key}")
        if len(set(values)) < len(values):
            raise UserError(f"a value is given twice in {text!r}", key=f"--grid {key}")
        grid[key] = values
    return grid


def parse_seeds(count: int | None, listed: str | None) -> list[int]:
    """``--seeds N`` (0..N-1, default 3) or ``--seed-list 0,1,2``."""
    if listed is not None:
        try:
            seeds = [int(s) for s in listed.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"expected whole numbers separated by commas, got {listed!r}", key="--seed-list") from None
        if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
            raise UserError("expected distinct seeds >= 0", key="--seed-list")
        return seeds
    count = 3 if count is None else count
    if count < 1:
        raise UserError("must be at least 1", key="--seeds")
    return list(range(count))


def setting_name(values: dict[str, str]) -> str:
    """The folder of a setting: ``key=value`` pairs joined by commas (``/`` and odd characters %-escaped)."""
    return ",".join(f"{k}={quote(v, safe='.:+-_@[]')}" for k, v in values.items()) or BASE


def plan(config: str | None, sets: Sequence[str], grid_items: Sequence[str], seeds: Sequence[int],
         root: Path) -> list[Job]:
    """Every run of the sweep, validated: the config of each combination and seed, and its preflight.

    Raises :class:`UserError` (one line, naming the setting) for bad input, and for a run
    directory of the sweep that holds something else than this sweep's run.
    """
    from fl_ee.preflight import preflight

    if "seed" in parse_overrides(list(sets)):
        raise UserError("the seeds of a sweep come from --seeds or --seed-list", key="--set seed")
    if (root / ROUNDS).exists():
        raise UserError(f"{root} is a run directory; choose another --out for the sweep")
    grid = parse_grid(grid_items)
    runs = []  # every config first (fast), then every preflight (data and split)
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        name = setting_name(values)
        for seed in seeds:
            overrides = (*sets, *(f"{k}={v}" for k, v in values.items()), f"seed={seed}")
            cfg = _named(name, seed, load_config, config, parse_overrides(list(overrides)))
            runs.append((name, seed, overrides, cfg))
    jobs = [Job(name, seed, config, overrides, _named(name, seed, preflight, cfg), root / name / f"{SEED_PREFIX}{seed}")
            for name, seed, overrides, cfg in runs]
    for job in jobs:
        check_existing(job)
    return jobs


def _named(setting: str, seed: int, check: Callable[..., Config], *args: Any) -> Config:
    """``check(*args)``, its :class:`UserError` naming the setting and seed."""
    try:
        return check(*args)
    except UserError as exc:
        raise UserError(f"{exc} (in setting {setting}, seed {seed})") from None


def check_existing(job: Job) -> None:
    """A run directory of the sweep is new, empty, or holds a run of this very config."""
    if job.started:
        saved = load_run(job.path).config
        if (changed := config_difference(resumable_config(saved), job.cfg)) is not None:
            raise UserError(f"{job.path} holds a run whose {changed} differs from this sweep's; "
                            "choose another --out")
    elif job.path.exists() and (not job.path.is_dir() or any(job.path.iterdir())):
        raise UserError(f"{job.path} is in the way of this sweep's run (not an fl-ee run); choose another --out")


def default_sweep_dir() -> Path:
    """``sweeps/<timestamp>`` under the working directory."""
    return Path("sweeps") / datetime.now().strftime("%Y%m%d-%H%M%S")


# ------------------------------------------------------------------------------ sweep.json


def sweep_summary(jobs: Sequence[Job], failed: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    """``sweep.json``: the sweep's arguments, its runs, and per setting each headline metric over the seeds."""
    metrics = headline(max(j.cfg.max_depth for j in jobs))
    settings: dict[str, Any] = {}
    for name in dict.fromkeys(j.setting for j in jobs):
        done = [load_run(j.path) for j in jobs if j.setting == name and j.finished]
        setting = Setting(name, tuple(done))
        settings[name] = {"seeds": setting.seeds, "metrics": setting.summary(metrics)}
    return {
        "sweep": spec,
        "runs": {"total": len(jobs), "finished": sum(j.finished for j in jobs), "failed": failed},
        "metrics": {key: {"label": label, "higher_is_better": higher} for label, key, _, higher in metrics},
        "settings": settings,
    }


def write_sweep_json(root: Path, jobs: Sequence[Job], failed: dict[str, str], spec: dict[str, Any]) -> None:
    """Replace ``sweep.json`` atomically."""
    atomic_write(root / SWEEP_JSON, to_json(sweep_summary(jobs, failed, spec), indent=2) + "\n")


# ------------------------------------------------------------------------------- running


class Handle(Protocol):
    """A started run, as :class:`subprocess.Popen` is one."""

    def poll(self) -> int | None:
        """The exit code once it ended, else ``None``."""

    def send_signal(self, sig: int) -> None:
        """Ask it to stop."""


Launcher = Callable[[Job, bool], Handle]  # (job, resume) -> the started run


def launch_subprocess(job: Job, resume: bool) -> subprocess.Popen[bytes]:
    """``fl-ee run CONFIG --set ... --out DIR`` (or ``fl-ee resume DIR``), its output appended to the job's log."""
    command = [sys.executable, "-m", "fl_ee.cli"]
    if resume:
        command += ["resume", str(job.path)]
    else:
        sets = itertools.chain.from_iterable(("--set", o) for o in job.overrides)
        command += ["run", *([job.config] if job.config else []), *sets, "--out", str(job.path)]
    job.path.parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        # its own session: a Ctrl-C reaches the sweep, which stops each run in turn; a SIGTERM
        # when the sweep ends, also by SIGKILL, so that no run (nor its Ray) outlives it
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent(signal.SIGTERM))


class _Stop(Exception):
    """SIGTERM reached the sweep."""


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def run_sweep(jobs: Sequence[Job], root: Path, spec: dict[str, Any], launch: Launcher, parallel: int,
              console: Console) -> dict[str, str]:
    """Run the unfinished jobs, ``parallel`` at once, with one progress display; the failed runs and why.

    ``sweep.json`` is rewritten after each finished run. On Ctrl-C or SIGTERM every
    running run is asked to stop (it keeps its finished rounds) and ``KeyboardInterrupt``
    is raised once they have.
    """
    root.mkdir(parents=True, exist_ok=True)
    pending = [j for j in jobs if not j.finished]
    failed: dict[str, str] = {}
    write_sweep_json(root, jobs, failed, spec)
    running: dict[Job, Handle] = {}
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=console)
    runs = progress.add_task("runs", total=len(jobs), completed=len(jobs) - len(pending), status="")
    rounds = progress.add_task("rounds", total=sum(j.cfg.rounds for j in jobs), status="")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with progress:
            while pending or running:
                while pending and len(running) < parallel:
                    job = pending.pop(0)
                    running[job] = launch(job, job.started)
                for job, handle in list(running.items()):
                    if (code := handle.poll()) is None:
                        continue
                    del running[job]
                    label = f"{job.setting}/{job.path.name}"
                    if code == 0 and job.finished:
                        write_sweep_json(root, jobs, failed, spec)
                    else:
                        failed[label] = f"exit {code}: {_last_line(job.log)}"
                        progress.console.print(f"[red]{label} failed[/] ({failed[label]}); log in {job.log}")
                    progress.advance(runs)
                names = ", ".join(f"{j.setting}/{j.path.name}" for j in running)
                progress.update(rounds, completed=sum(j.rounds_done() for j in jobs), status=names)
                progress.update(runs, status=f"{len(failed)} failed" if failed else "")
                if running:
                    time.sleep(POLL_S)
    except (KeyboardInterrupt, _Stop):
        _stop(running)
        console.print(f"sweep stopped; {sum(j.finished for j in jobs)} of {len(jobs)} runs finished, the same command "
                      "continues it")
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    write_sweep_json(root, jobs, failed, spec)
    return failed


def _stop(running: dict[Job, Handle]) -> None:
    """Ask every running run to stop as Ctrl-C would; kill those still running after :data:`STOP_WAIT_S`."""
    for handle in running.values():
        handle.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_WAIT_S
    while any(h.poll() is None for h in running.values()) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    for handle in running.values():
        if handle.poll() is None:
            handle.send_signal(signal.SIGKILL)


def cmd_sweep(config: str | None, sets: list[str], grid: list[str], seeds: list[int], out: str | None,
              parallel: int) -> int:
    """``fl-ee sweep``: plan and validate, run, then print the settings compared (exit 1 if a run failed)."""
    from fl_ee.groups import group_runs, settings_table
    from sims.backend import check_backend

    if parallel < 1:
        raise UserError("must be at least 1", key="--jobs")
    root = Path(out) if out else default_sweep_dir()
    jobs = plan(config, sets, grid, seeds, root)
    for cfg in {j.cfg.simulation: j.cfg for j in jobs}.values():
        check_backend(cfg)
    err = Console(stderr=True, soft_wrap=True)
    todo = sum(not j.finished for j in jobs)
    err.print(f"sweep of {len(jobs)} runs in {root}: {len(jobs) - todo} finished before, {todo} to run")
    spec = {"config": config, "set": sets, "grid": parse_grid(grid), "seeds": seeds}
    failed = run_sweep(jobs, root, spec, launch_subprocess, parallel, err)
    if finished := [load_run(j.path) for j in jobs if j.finished]:
        settings = group_runs(finished)  # in the order of the grid
        Console().print(settings_table(settings, settings[0]))
    err.print(f"results in {root / SWEEP_JSON}" + (f"; {len(failed)} runs failed (see their logs); the same "
                                                   "command runs them again" if failed else ""))
    return 1 if failed else 0
