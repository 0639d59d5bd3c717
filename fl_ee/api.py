"""fl-ee from Python: run, resume and load simulations and sweeps, and compare them, with typed results.

The same work as the ``fl-ee`` command, for notebooks and scripts::

    import fl_ee

    run = fl_ee.run("quickstart", set={"rounds": 5, "data.alpha": 0.1}, out="runs/alpha-0.1")
    run.summary.accuracy.personalised.mean      # typed: fl_ee.results.schema.Summary
    run.rounds[["round", "evaluate.personalised.mean"]]    # pandas, one row per round
    run.clients.groupby("tier").accuracy_exit1.mean()      # pandas, one row per client
    run.plots()["accuracy_rounds"]                         # matplotlib figures

Bad input raises :class:`fl_ee.core.errors.UserError`, whose message is the one line the
command prints; nothing is written then. A run interrupted (Ctrl-C, ``SIGTERM``) keeps its
finished rounds for :func:`resume`, as the command does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fl_ee.core.config import Config, load_config
from fl_ee.core.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from fl_ee.federation.checkpoint import Checkpoints
    from fl_ee.federation.resume import Resume
    from fl_ee.results.groups import Setting
    from fl_ee.results.rundir import Run as RunFiles
    from fl_ee.results.rundir import RunDir
    from fl_ee.results.schema import Summary


@dataclass(frozen=True)
class Run:
    """One run directory, read: its config, its typed summary, its rounds and clients as data frames, its plots.

    ``summary`` is ``None`` for a run that did not finish (its ``rounds`` still hold what
    it did). Read once on first use; a run still going on is read as it is then.
    """

    path: Path

    @cached_property
    def files(self) -> RunFiles:
        """The run directory's files, parsed (what ``fl-ee report`` reads)."""
        from fl_ee.results.rundir import load_run as read

        return read(self.path)

    @property
    def config(self) -> Config:
        """The run's resolved configuration (``config.toml``)."""
        return self.files.config

    @property
    def finished(self) -> bool:
        """Whether the run wrote its ``summary.json``."""
        return self.files.summary is not None

    @cached_property
    def summary(self) -> Summary | None:
        """``summary.json``, typed (:class:`fl_ee.results.schema.Summary`); ``None`` if the run did not finish."""
        from fl_ee.results.schema import Summary

        raw = self.files.summary
        return None if raw is None else Summary.model_validate(raw)

    @cached_property
    def rounds(self) -> pd.DataFrame:
        """``rounds.jsonl``, one row per round; columns are the records' dotted keys (``evaluate.global.ensemble``)."""
        import pandas as pd

        return pd.json_normalize(self.files.rounds, sep=".")

    @cached_property
    def clients(self) -> pd.DataFrame:
        """``clients.csv``, one row per client (empty for an unfinished run); accuracies are fractions."""
        import pandas as pd

        from fl_ee.results.rundir import CLIENTS

        path = self.path / CLIENTS
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    def plots(self) -> dict[str, Figure]:
        """Every plot ``fl-ee report --plots`` draws of this run, by name; plots the run cannot give are left out."""
        from fl_ee.results.plots import PLOTS, Skip

        figures = {}
        for name, plot in PLOTS.items():
            try:
                figures[name] = plot(self.files)
            except Skip:
                continue
        return figures


@dataclass(frozen=True)
class Sweep:
    """A sweep root, read: its settings (each over its seeds) and their statistics."""

    path: Path

    @cached_property
    def _settings(self) -> list[Setting]:
        from fl_ee.results.groups import load_settings

        return load_settings([self.path])

    @property
    def runs(self) -> dict[str, list[Run]]:
        """Each setting's runs (one per seed), by setting name."""
        return {s.name: [Run(r.path) for r in s.runs] for s in self._settings}

    @cached_property
    def settings(self) -> pd.DataFrame:
        """One row per setting and headline metric: seeds, mean, standard deviation and 95% CI."""
        return _statistics(self._settings, None)


def run(config_or_preset: str | Path | None = None, *, set: Mapping[str, Any] | None = None,
        out: str | Path | None = None, progress: bool = True) -> Run:
    """Run a simulation: a TOML file or preset name (default ``quickstart``), with dotted ``set`` overrides.

    ``set`` maps dotted keys to values as ``--set`` takes them (``{"rounds": 5,
    "tiers.0.depth": 2}``); ``out`` is the run directory (default ``runs/<timestamp>``), a
    new or empty folder. ``progress`` shows the progress bar (it renders in Jupyter too).
    """
    return execute(checked_run(config_or_preset, set or {}, out), out=out, progress=progress)


def resume(run_dir: str | Path, *, set: Mapping[str, Any] | None = None, progress: bool = True) -> Run:
    """Continue the unfinished run in ``run_dir`` from its latest checkpoint (``set``: keys that change no result)."""
    prepared = checked_resume(run_dir, set or {})
    return execute(prepared.cfg, run_dir=prepared.run_dir, checkpoints=prepared.checkpoints,
                   done=prepared.after_round, progress=progress)


def checked_run(config_or_preset: str | Path | None, overrides: Mapping[str, Any],
                out: str | Path | None) -> Config:
    """The config of a new run, checked before anything starts: config, run directory, Ray resources, preflight.

    A used ``out`` and resources Ray cannot host are refused before the data loads.
    """
    from fl_ee.results.rundir import check_new_run_dir

    cfg = load_config(None if config_or_preset is None else str(config_or_preset), dict(overrides))
    if out is not None:
        check_new_run_dir(Path(out))
    from fl_ee.federation.preflight import preflight  # torch, Ray: only once the config and folder are good
    from sims.backend import check_backend

    check_backend(cfg)
    return preflight(cfg)


def checked_resume(run_dir: str | Path, overrides: Mapping[str, Any]) -> Resume:
    """An unfinished run set up to continue (:func:`~fl_ee.federation.resume.prepare_resume`), its Ray checked."""
    from fl_ee.federation.resume import prepare_resume

    prepared = prepare_resume(str(run_dir), dict(overrides))
    from sims.backend import check_backend  # Ray: only once the run directory is good

    check_backend(prepared.cfg)
    return prepared


def execute(cfg: Config, *, out: str | Path | None = None, run_dir: RunDir | None = None,
            checkpoints: Checkpoints | None = None, done: int = 0, progress: bool = True,
            tensorboard: str | None = None) -> Run:
    """Run ``cfg`` on Ray: a new run directory at ``out``, or ``run_dir`` resumed after round ``done``.

    ``cfg`` has passed :func:`~fl_ee.federation.preflight.preflight` and
    :func:`~sims.backend.check_backend` (which :func:`run` and :func:`resume` call first).

    The run directory, its checkpoints, the progress bar (on stderr) and TensorBoard
    follow the run; ``fl-ee run`` and ``fl-ee resume`` are this function. Raises
    :class:`sims.engine.Interrupted` when a signal stopped the run, and the failure itself
    (a ``RuntimeError`` from Flower's runtime, :class:`~fl_ee.federation.faults.Diverged`, a
    strategy's fault) when it failed; finished rounds are kept, and a new run that
    finished none leaves nothing behind.
    """
    from contextlib import ExitStack

    from rich.console import Console

    from fl_ee.results.rundir import RunDir, default_run_dir
    from sims.backend import start_ray

    if run_dir is None:
        run_dir = RunDir.create(out or default_run_dir())  # a folder that cannot be made is refused before Ray starts
    with ExitStack() as stack:
        stack.enter_context(run_dir.discarded_on_early_failure())
        ray_started = start_ray(cfg)  # Ray's processes come up while the rest is imported
        from fl_ee.federation.checkpoint import Checkpoints
        from fl_ee.federation.client import app as client_app
        from fl_ee.federation.server import make_server_app
        from fl_ee.results.progress import ProgressBar
        from fl_ee.results.tensorboard import tensorboard_observers
        from sims.engine import simulate

        if checkpoints is None:
            checkpoints = Checkpoints(run_dir.path)
        bars = [stack.enter_context(ProgressBar(cfg.rounds, Console(stderr=True, soft_wrap=True), done=done))
                ] if progress else []
        observers = [run_dir, *bars, *tensorboard_observers(cfg, run_dir.path, tensorboard)]
        simulate(make_server_app(cfg, observers, checkpoints), client_app, cfg, run_dir.path,
                 on_interrupt=run_dir.discard_if_unstarted, ray_started=ray_started)
    return Run(run_dir.path)


def load_run(run_dir: str | Path) -> Run:
    """A finished or unfinished run directory, read (a one-line :class:`UserError` if it is none)."""
    from fl_ee.results.rundir import check_run_dir

    path = Path(run_dir)
    check_run_dir(path)
    result = Run(path)
    result.config  # noqa: B018  (reads the directory now, so a damaged one fails here)
    return result


def _overrides(values: Mapping[str, Any]) -> list[str]:
    """``{"data.alpha": 0.1}`` as ``["data.alpha=0.1"]``: each value as a TOML literal."""
    return [f"{key}={_literal(value)}" for key, value in values.items()]


def _literal(value: Any) -> str:
    """``value`` as ``--set`` reads it back to the same value, on one line: a bare word as it is, else TOML."""
    from fl_ee.core.config import parse_value

    if isinstance(value, str) and parse_value(value) == value and "," not in value:
        return value  # a sweep's folder is then named by the word itself
    return _toml(value)


def _toml(value: Any) -> str:
    """``value`` as a one-line TOML literal."""
    import json

    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # numbers, booleans and quoted strings read the same in TOML


def sweep(config_or_preset: str | Path | None = None, *, grid: Mapping[str, Sequence[Any]],
          seeds: int | Sequence[int] = 3, set: Mapping[str, Any] | None = None,
          out: str | Path | None = None, jobs: int = 1) -> Sweep:
    """Run every combination of ``grid`` values times every seed, as ``fl-ee sweep`` does; resumable at ``out``.

    ``grid`` maps dotted keys to the values to sweep (``{"strategy.name": ["depthfl",
    "exclusive"]}``); ``seeds`` is a count (seeds ``0..n-1``) or the seeds themselves.
    """
    from fl_ee.studies.sweep import cmd_sweep, default_sweep_dir, parse_seeds

    seed_list = parse_seeds(seeds, None) if isinstance(seeds, int) else parse_seeds(None, ",".join(map(str, seeds)))
    items = [f"{key}={','.join(_literal(v) for v in values)}" for key, values in grid.items()]
    root = Path(out) if out is not None else default_sweep_dir()
    code = cmd_sweep(None if config_or_preset is None else str(config_or_preset), _overrides(set or {}), items,
                     seed_list, str(root), jobs)
    if code != 0:
        raise UserError(f"sweep {root}: some runs failed (exit code {code}); their logs are in the sweep root")
    return Sweep(root)


def load_sweep(root: str | Path) -> Sweep:
    """A sweep root, read (a one-line :class:`UserError` if it is none)."""
    from fl_ee.results.groups import is_sweep_root

    path = Path(root)
    if not is_sweep_root(path):
        raise UserError(f"{path} is not a sweep root (no sweep.json and no setting folders of seed runs)")
    return Sweep(path)


def compare(*paths: str | Path, baseline: str | None = None) -> pd.DataFrame:
    """Runs or sweep roots grouped into settings, each metric's statistics and its test against ``baseline``.

    One row per setting and headline metric, as ``fl-ee compare --json``: seeds, mean,
    standard deviation, 95% CI, and the paired (or Welch) t-test against the baseline
    setting (default the first; a setting's name or one of its values).
    """
    from fl_ee.results.groups import find_setting, load_settings

    settings = load_settings(list(paths))
    return _statistics(settings, find_setting(settings, baseline) if baseline else settings[0])


def _statistics(settings: Sequence[Setting], baseline: Setting | None) -> pd.DataFrame:
    """The settings' statistics (and tests against ``baseline``) as one frame, a row per setting and metric.

    Columns: ``setting``, ``metric``, ``seeds``, ``n``, ``mean``, ``std``, ``ci95_low``,
    ``ci95_high``, and with a baseline ``difference``, ``t``, ``df``, ``p``, ``test`` and
    ``significant`` (empty for the baseline itself).
    """
    import pandas as pd

    from fl_ee.results.groups import comparison

    table = comparison(settings, baseline or settings[0])
    rows = []
    for name, entry in table["settings"].items():
        for metric, stats in entry["metrics"].items():
            low, high = stats["ci95"] or (None, None)
            row = {"setting": name, "metric": metric, "seeds": entry["seeds"], "n": stats["n"],
                   "mean": stats["mean"], "std": stats["std"], "ci95_low": low, "ci95_high": high}
            if baseline is not None:
                test = stats.get("vs_baseline") or {}
                row |= {k: test.get(k) for k in ("difference", "t", "df", "p", "test", "significant")}
            rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["Run", "Sweep", "compare", "execute", "load_run", "load_sweep", "resume", "run", "sweep"]
