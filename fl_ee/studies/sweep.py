"""``fl-ee sweep``: every combination of grid values times every seed, each an ordinary run directory.

A sweep root holds ``<setting>/seed-<s>/`` (a run directory, as ``fl-ee run --out`` makes
it) and ``<setting>/seed-<s>.log`` (that run's output), and ``sweep.json``, rewritten
atomically after each finished run with every setting's statistics over its seeds
(:mod:`fl_ee.results.groups`). Every combination and seed is validated (config and preflight)
before the first run starts, and the config warnings are given once, naming their
setting. Each run is a ``fl-ee run`` subprocess, ``--jobs`` at once; running the same
command again skips the finished runs and continues an interrupted one from its latest
checkpoint with ``fl-ee resume`` (which ends with the same results, byte for byte, as an
uninterrupted run, and starts over where no checkpoint was written).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol
from urllib.parse import quote

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fl_ee.core.atomic import atomic_write
from fl_ee.core.config import Config, load_config, parse_overrides, parse_value
from fl_ee.core.errors import UserError, warn
from fl_ee.core.resumable import config_difference, resumable_config
from fl_ee.results.groups import SEED_PREFIX, SWEEP_JSON, Setting, headline
from fl_ee.results.rundir import ROUNDS, SUMMARY, load_run, make_writable, to_json
from sims.reaper import die_with_parent

POLL_S = 0.25  # how often running runs are looked at
STOP_WAIT_S = 60.0  # after an interrupt: how long a run may take to stop before it is killed
BASE = "base"  # the one setting of a sweep without --grid
MAX_SEEDS = 100  # seeds of a sweep
MAX_RUNS = 1000  # runs of a sweep (settings x seeds); compare reads several sweeps together
MAX_VALUE_CHARS = 40  # a longer grid value is shortened, with a hash, in its setting's folder name
MAX_NAME_CHARS = 200  # and a longer folder name as a whole (file systems allow 255 bytes)


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


def split_values(text: str) -> list[str]:
    """``text`` split at its top-level commas: those outside brackets, braces and quotes.

    ``[1,2],[1,3]`` is two values, ``"a,b",c`` too; each is stripped of spaces.
    """
    values, start, depth, quote, i = [], 0, 0, "", 0
    while i < len(text):
        char = text[i]
        if quote:  # inside a TOML string, where a backslash escapes the next character of a "..." one
            if char == "\\" and quote == '"':
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
        i += 1
    return [v.strip() for v in [*values, text[start:]]]


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["strategy.name=depthfl,exclusive", ...]`` as ``{"strategy.name": ["depthfl", "exclusive"]}``.

    Values are split at top-level commas (:func:`split_values`: ``model.exits=[1,2],[1,3]``)
    and stay text (``--set`` parses them). An empty grid or value, a key given twice, a
    value given twice (``0.1,0.10`` too) and ``seed`` (the seeds come from ``--seeds``) are refused.
    """
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--grid {item!r}: expected KEY=V1,V2,...")
        if not text.strip():
            raise UserError("empty grid: give at least one value, KEY=V1,V2,...", key=f"--grid {key}")
        values = split_values(text)
        if "" in values:
            raise UserError(f'value {values.index("") + 1} of {text!r} is empty; write "" for an empty string',
                            key=f"--grid {key}")
        if key == "seed":
            raise UserError("the seeds of a sweep come from --seeds or --seed-list", key="--grid seed")
        if key in grid:
            raise UserError("given twice; list all its values in one --grid", key=f"--grid {key}")
        parsed = [repr(parse_value(v)) for v in values]
        if len(set(parsed)) < len(parsed):
            twice = next(v for i, v in enumerate(values) if parsed[i] in parsed[:i])
            raise UserError(f"the value {twice} is given twice in {text!r}", key=f"--grid {key}")
        grid[key] = values
    return grid


def parse_seeds(count: int | None, listed: str | None) -> list[int]:
    """``--seeds N`` (0..N-1, default 3) or ``--seed-list 0,1,2``: at most :data:`MAX_SEEDS`."""
    if listed is not None:
        try:
            seeds = [int(s) for s in listed.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"expected whole numbers separated by commas, got {listed!r}", key="--seed-list") from None
        if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
            raise UserError("expected distinct seeds >= 0", key="--seed-list")
        if len(seeds) > MAX_SEEDS:
            raise UserError(f"{len(seeds)} seeds; a sweep runs at most {MAX_SEEDS}", key="--seed-list")
        return seeds
    count = 3 if count is None else count
    if not 1 <= count <= MAX_SEEDS:
        raise UserError(f"must be in 1..{MAX_SEEDS}", key="--seeds")
    return list(range(count))


def _shortened(text: str, limit: int) -> str:
    """``text``, or where longer than ``limit``: its start, ``~`` and 8 hex digits of its SHA-256 (stable, unique)."""
    if len(text) <= limit:
        return text
    head = re.sub(r"%[0-9A-Fa-f]?$", "", text[: limit - 9])  # never half of a %-escape
    return f"{head}~{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def setting_name(values: dict[str, str]) -> str:
    """The folder of a setting: ``key=value`` pairs joined by commas (``/``, ``,`` and odd characters %-escaped).

    A value longer than :data:`MAX_VALUE_CHARS`, and a name longer than
    :data:`MAX_NAME_CHARS`, keep their start, then ``~`` and 8 hex digits of the whole's hash.
    """
    pairs = (f"{k}={_shortened(quote(v, safe='.:+-_@[]'), MAX_VALUE_CHARS)}" for k, v in values.items())
    return _shortened(",".join(pairs), MAX_NAME_CHARS) or BASE


def check_root(root: Path) -> None:
    """Refuse, in one line, a sweep root that is (or is under) a file, or is a run directory."""
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{existing} is not a directory; choose another --out")
    if (root / ROUNDS).exists():
        raise UserError(f"{root} is a run directory; choose another --out")


def plan(config: str | None, sets: Sequence[str], grid_items: Sequence[str], seeds: Sequence[int],
         root: Path, console: Console | None = None) -> list[Job]:
    """Every run of the sweep, validated: each combination of the grid's values is a setting (:func:`plan_settings`).

    Raises :class:`UserError` (one line) for a bad grid, a key in both ``--grid`` and
    ``--set``, and more than :data:`MAX_RUNS` runs, before any config is loaded.
    """
    check_root(root)
    overrides = parse_overrides(list(sets))
    grid = parse_grid(grid_items)
    if both := [k for k in grid if k in overrides]:
        raise UserError("given in both --grid and --set; drop one", key=f"--grid {both[0]}")
    if (total := math.prod(len(v) for v in grid.values()) * len(seeds)) > MAX_RUNS:
        sizes = " x ".join(str(len(v)) for v in grid.values())
        raise UserError(f"{total} runs ({sizes} values x {len(seeds)} seeds); a sweep runs at most {MAX_RUNS}: "
                        "split it into several (fl-ee compare reads them together)", key="--grid")
    settings: dict[str, list[str]] = {}
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        name = setting_name(values)
        if name in settings:  # two values only a hash tells apart, and the hashes met
            raise UserError(f"two settings would share the folder {name}; shorten their values", key="--grid")
        settings[name] = [f"{k}={v}" for k, v in values.items()]
    return plan_settings(config, sets, settings, seeds, root, console)


def plan_settings(config: str | None, sets: Sequence[str], settings: Mapping[str, Sequence[str]],
                  seeds: Sequence[int], root: Path, console: Console | None = None) -> list[Job]:
    """Every run of named ``settings`` (each a folder name and its ``--set`` arguments) times ``seeds``, validated.

    ``sets`` applies to every run, then the setting's own. Raises :class:`UserError` (one
    line, naming the setting) for bad input, and for a run directory under ``root`` that
    holds something else than this run. Configs are checked first (fast); the data, split,
    model and strategy of each setting once, then each further seed's split (the only check
    that depends on the seed), with a progress bar on ``console`` where it is a terminal.
    """
    check_root(root)
    if "seed" in parse_overrides(list(sets)):
        raise UserError("the seeds of a sweep come from --seeds or --seed-list", key="--set seed")
    configs: dict[str, list[tuple[int, tuple[str, ...], Config]]] = {}
    for name, setting_sets in settings.items():
        configs[name] = []
        for seed in seeds:
            run_sets = (*sets, *setting_sets, f"seed={seed}")
            cfg = _named(name, seed, load_config, config, parse_overrides(list(run_sets)))
            configs[name].append((seed, run_sets, cfg))
    from fl_ee.federation.preflight import preflight, reseeded

    check = functools.partial(preflight, warnings=False)  # said once per setting by run_planned

    jobs = []
    with Progress(TextColumn("validating the sweep's runs"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True, disable=console is None or not console.is_terminal) as progress:
        task = progress.add_task("", total=len(settings) * len(seeds))
        for name, runs in configs.items():
            first = _named(name, runs[0][0], check, runs[0][2])
            for seed, run_sets, cfg in runs:
                checked = first if cfg is runs[0][2] else _named(name, seed, reseeded, first, seed)
                jobs.append(Job(name, seed, config, run_sets, checked, root / name / f"{SEED_PREFIX}{seed}"))
                progress.advance(task)
    for job in jobs:
        check_existing(job)
    return jobs


def setting_warnings(configs: Mapping[str, Config]) -> list[str]:
    """The :func:`~fl_ee.federation.preflight.config_warnings` of a sweep, by setting (one config each, for every seed).

    A line that holds in every setting of several is given once, ``(in every setting)``;
    any other names its setting, ``(in setting training.distillation=last-exit)``.
    """
    from fl_ee.federation.preflight import config_warnings

    found = {name: config_warnings(cfg) for name, cfg in configs.items()}
    if len(found) == 1:
        return next(iter(found.values()))
    everywhere = [line for line in next(iter(found.values())) if all(line in lines for lines in found.values())]
    return [*(f"{line} (in every setting)" for line in everywhere),
            *(f"{line} (in setting {name})" for name, lines in found.items() for line in lines
              if line not in everywhere)]


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


def check_jobs(parallel: int) -> None:
    """Refuse ``--jobs`` below 1, in one line."""
    if parallel < 1:
        raise UserError("must be at least 1", key="--jobs")


def run_planned(jobs: Sequence[Job], root: Path, spec: dict[str, Any], parallel: int, err: Console) -> dict[str, str]:
    """Run the planned ``jobs`` not finished yet under ``root`` (Ray checked first, warnings once per setting).

    ``spec`` is what ``sweep.json`` records of the arguments; returns the failed runs and why.
    """
    from sims.backend import check_backend  # imports Ray

    for cfg in {j.cfg.simulation: j.cfg for j in jobs}.values():
        check_backend(cfg)
    for line in setting_warnings({j.setting: j.cfg for j in jobs}):
        warn(line)
    make_writable(root, "sweep root")
    todo = sum(not j.finished for j in jobs)
    err.print(f"sweep of {len(jobs)} runs in {root}: {len(jobs) - todo} finished before, {todo} to run")
    return run_sweep(jobs, root, spec, launch_subprocess, parallel, err)


def cmd_sweep(config: str | None, sets: list[str], grid: list[str], seeds: list[int], out: str | None,
              parallel: int) -> int:
    """``fl-ee sweep``: plan and validate, run, then print the settings compared (exit 1 if a run failed)."""
    from fl_ee.results.groups import group_runs, settings_table

    check_jobs(parallel)
    root = Path(out) if out else default_sweep_dir()
    err = Console(stderr=True, soft_wrap=True)
    jobs = plan(config, sets, grid, seeds, root, err)
    spec = {"config": config, "set": sets, "grid": parse_grid(grid), "seeds": seeds}
    failed = run_planned(jobs, root, spec, parallel, err)
    if finished := [load_run(j.path) for j in jobs if j.finished]:
        settings = group_runs(finished)  # in the order of the grid
        Console().print(settings_table(settings, settings[0]))
    err.print(f"results in {root / SWEEP_JSON}" + (f"; {len(failed)} runs failed (see their logs); the same "
                                                   "command runs them again" if failed else ""))
    return 1 if failed else 0
