"""Runs grouped by setting: headline metrics per run, statistics per setting, significance against a baseline.

A *setting* is a config up to its seed: runs whose configs differ only in ``seed`` (and
in keys that change no result, :data:`~fl_ee.core.resumable.RESUMABLE_KEYS`) are seeds of one
setting. A sweep root (``fl-ee sweep``) holds ``<setting>/seed-<s>/`` run directories;
its settings are named by their folders, other groups by the keys in which their
configs differ (``strategy.name=exclusive``). ``sweep.json`` and ``fl-ee compare``
both read their figures from here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text

from fl_ee.core.errors import UserError, warn
from fl_ee.core.resumable import resumable_config
from fl_ee.results.fit import Col, Sheet
from fl_ee.results.report import COMPARED, key_metrics, pct, short_names
from fl_ee.results.rundir import ROUNDS, SUMMARY, Run, check_run_dir, get, load_run
from fl_ee.results.stats import ALPHA, LEVEL, Significance, compare_seeds, describe

SWEEP_JSON = "sweep.json"
SEED_PREFIX = "seed-"

Metric = tuple[str, str, Callable[[Any], str], bool]  # label, key, format, whether higher is better


def headline(max_depth: int) -> list[Metric]:
    """The headline metrics of runs up to depth ``max_depth``.

    :data:`~fl_ee.results.report.COMPARED`, adaptive accuracy, the personalised exits' ensemble, and the
    global model's accuracy at each exit and of its exits' ensemble.
    """
    return [*COMPARED, ("adaptive accuracy %", "adaptive_accuracy", pct, True),
            ("ensemble %", "ensemble", pct, True),
            *((f"global exit{i} %", f"global_exit{i}", pct, True) for i in range(1, max_depth + 1)),
            ("global ensemble %", "global_ensemble", pct, True)]


def headline_values(run: Run) -> dict[str, float | None]:
    """A run's headline metrics by key (``None`` where the run has no value, e.g. a target never reached)."""
    by_exit = run.global_by_exit or {}
    return {**key_metrics(run), "adaptive_accuracy": get(run.personalised, "adaptive_accuracy"),
            "ensemble": get(run.personalised, "ensemble"),
            **{f"global_exit{i}": by_exit.get(str(i)) for i in range(1, run.config.max_depth + 1)},
            "global_ensemble": run.global_ensemble}


@dataclass(frozen=True)
class Setting:
    """The runs (one per seed, seeds ascending) of one setting."""

    name: str
    runs: tuple[Run, ...]

    @property
    def seeds(self) -> list[int]:
        """The runs' seeds."""
        return [r.config.seed for r in self.runs]

    def values(self, key: str) -> dict[int, float | None]:
        """A headline metric by seed."""
        return {r.config.seed: headline_values(r).get(key) for r in self.runs}

    def summary(self, metrics: Sequence[Metric]) -> dict[str, Any]:
        """Per metric: ``n``, ``mean``, ``std``, ``ci95`` and the per-seed ``values``."""
        return {key: {**describe(list(self.values(key).values())), "values": self.values(key)}
                for _, key, _, _ in metrics}


# ------------------------------------------------------------------------------ grouping


def _settings_order(root: Path) -> dict[str, int]:
    """Each setting's position in the sweep root's ``sweep.json`` (none where it is missing or unreadable)."""
    try:
        settings = json.loads((root / SWEEP_JSON).read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        return {}
    return {name: i for i, name in enumerate(settings)} if isinstance(settings, dict) else {}


def sweep_run_dirs(root: Path) -> list[Path]:
    """The run directories of a sweep root, ``<setting>/seed-<s>/``, finished or not.

    Settings in the order of ``sweep.json`` (the grid's, as ``fl-ee sweep`` prints them);
    folders it does not name follow by name.
    """
    order = _settings_order(root)
    found = [p for p in root.glob(f"*/{SEED_PREFIX}*") if p.is_dir() and (p / ROUNDS).is_file()]
    return sorted(found, key=lambda p: (order.get(p.parent.name, len(order)), p))


def is_sweep_root(path: Path) -> bool:
    """Whether ``path`` holds a sweep's run directories (and is no run directory itself)."""
    return path.is_dir() and not (path / ROUNDS).exists() and bool(sweep_run_dirs(path))


def expand(paths: Sequence[str | Path]) -> list[Path]:
    """The finished run directories named by ``paths``: each a run directory, or a sweep root (its runs).

    An unfinished run is left out with a warning (its figures are not final); a sweep
    root none of whose runs finished, or a path that holds no run, is a :class:`UserError`.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if is_sweep_root(path):
            runs = sweep_run_dirs(path)
            finished = [p for p in runs if (p / SUMMARY).is_file()]
            if not finished:
                raise UserError(f"{path}: no run of this sweep has finished yet")
            if len(finished) < len(runs):
                left = [p.relative_to(path).as_posix() for p in runs if p not in finished]
                warn(f"{path}: {len(left)} unfinished run{'s' if len(left) > 1 else ''} of this sweep left out "
                     f"({', '.join(left[:3])}{', ...' if len(left) > 3 else ''})")
            found += finished
        else:
            check_run_dir(path)
            if (path / SUMMARY).is_file():
                found.append(path)
            else:
                warn(f"{path}: unfinished run (no {SUMMARY}) left out; `fl-ee resume {path}` finishes it")
    return list(dict.fromkeys(p.resolve() for p in found))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in _flat(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): tree}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def setting_key(run: Run) -> dict[str, Any]:
    """The config that makes a setting: the run's, without its seed and the keys that change no result."""
    raw = resumable_config(run.config)
    raw.pop("seed", None)
    return raw


def group_runs(runs: Sequence[Run]) -> list[Setting]:
    """Runs grouped by setting, in the order each setting first appears; a setting's runs by seed.

    A run of a seed its setting already has (a copy, or the same run again) is left out with a warning.
    """
    groups: dict[str, dict[int, Run]] = {}
    for run in runs:
        group = groups.setdefault(json.dumps(setting_key(run), sort_keys=True), {})
        if (first := group.setdefault(run.config.seed, run)) is not run:
            warn(f"{first.path} and {run.path} are both seed {run.config.seed} of one setting; only "
                 f"{first.path} is counted")
    members = [sorted(g.values(), key=lambda r: r.config.seed) for g in groups.values()]
    flats = [_flat(json.loads(k)) for k in groups]
    differing = sorted({k for f in flats for k in f if any(g.get(k) != f.get(k) for g in flats)})
    settings = []
    for runs_of, flat in zip(members, flats):
        folders = {r.path.parent.name for r in runs_of if r.path.name.startswith(SEED_PREFIX)}
        if len(folders) == 1 and len(runs_of) == sum(r.path.name.startswith(SEED_PREFIX) for r in runs_of):
            name = folders.pop()
        else:
            name = ",".join(f"{k}={_text(flat.get(k))}" for k in differing) or "all"
        settings.append(Setting(name, tuple(runs_of)))
    names = [s.name for s in settings]
    clashing = {n for n in names if names.count(n) > 1}  # two sweeps with a setting folder of the same name
    if clashing:  # those, and only those, get their folder below the sweeps' common one
        shorts = iter(short_names([s.runs[0].path.parent for s in settings if s.name in clashing])[1])
        settings = [Setting(f"{s.name} ({next(shorts)})", s.runs) if s.name in clashing else s for s in settings]
    return settings


def find_setting(settings: Sequence[Setting], name: str) -> Setting:
    """The setting called ``name``, or the only one with ``name`` among its ``key=value`` parts (``depthfl``)."""
    for s in settings:
        if s.name == name:
            return s
    matches = [s for s in settings if name in (part.partition("=")[2] for part in s.name.split(","))]
    if len(matches) != 1:
        known = ", ".join(s.name for s in settings)
        why = "matches several settings" if matches else "is no setting"
        raise UserError(f"{name!r} {why}; choose one of {known}", key="--baseline")
    return matches[0]


# ---------------------------------------------------------------------------- comparing


def _better(result: Significance, higher: bool) -> bool:
    return result.significant and (result.difference > 0) == higher


def best_setting(settings: Sequence[Setting], key: str, higher: bool) -> Setting | None:
    """The setting with the best mean, where it is significantly better than every other; else ``None``."""
    means = {s.name: describe(list(s.values(key).values()))["mean"] for s in settings}
    ranked = [s for s in settings if means[s.name] is not None]
    if len(ranked) < 2:
        return None
    best = max(ranked, key=lambda s: means[s.name] if higher else -means[s.name])
    for other in settings:
        if other is not best:
            result = compare_seeds(other.values(key), best.values(key))
            if result is None or not _better(result, higher):
                return None
    return best


def comparison(settings: Sequence[Setting], baseline: Setting) -> dict[str, Any]:
    """What ``fl-ee compare --json`` prints: each setting's statistics and its tests against ``baseline``."""
    metrics = headline(max(r.config.max_depth for s in settings for r in s.runs))
    out: dict[str, Any] = {"baseline": baseline.name, "level": LEVEL, "alpha": ALPHA, "settings": {}}
    for s in settings:
        summary = s.summary(metrics)
        if s is not baseline:
            for _, key, _, _ in metrics:
                result = compare_seeds(baseline.values(key), s.values(key))
                summary[key]["vs_baseline"] = None if result is None else {
                    "test": result.test, "difference": result.difference, "t": result.t, "df": result.df,
                    "p": result.p, "significant": result.significant}
        out["settings"][s.name] = {"runs": [str(r.path) for r in s.runs], "seeds": s.seeds, "metrics": summary}
    out["best"] = {key: (b.name if (b := best_setting(settings, key, higher)) else None)
                   for _, key, _, higher in metrics}
    return out


def _cell(stats: Mapping[str, Any], fmt: Callable[[Any], str]) -> str:
    if stats["mean"] is None:
        return "-"
    if stats["ci95"] is None:
        return fmt(stats["mean"])
    return f"{fmt(stats['mean'])} ± {fmt(stats['ci95'][1] - stats['mean'])}"


def settings_table(settings: Sequence[Setting], baseline: Setting) -> Sheet:
    """One column per setting, a row per headline metric: mean ± half the 95% CI, and the tests against ``baseline``."""
    data = comparison(settings, baseline)
    metrics = headline(max(r.config.max_depth for s in settings for r in s.runs))
    table = Sheet(f"Settings compared: mean ± {LEVEL:.0%} CI over seeds", [Col("metric", "left"),
                  *(Col(s.name + (" (baseline)" if s is baseline else "")) for s in settings)])
    table.add_row("seeds", *(",".join(map(str, s.seeds)) for s in settings))
    tests = []
    for s in settings:
        found = {(v.get("vs_baseline") or {}).get("test") for v in data["settings"][s.name]["metrics"].values()}
        tests.append("-" if s is baseline else " / ".join(sorted(t for t in found if t)) or "too few seeds")
    table.add_row("test vs baseline", *tests)
    table.add_section()
    for label, key, fmt, higher in metrics:
        cells: list[Text] = []
        for s in settings:
            stats = data["settings"][s.name]["metrics"][key]
            text = Text(_cell(stats, fmt), style="bold green" if data["best"][key] == s.name else "")
            test = stats.get("vs_baseline")
            if test and test["significant"]:
                up = (test["difference"] > 0) == higher
                text.append(" ▲" if up else " ▼", style="green" if up else "red")
            cells.append(text)
        table.add_row(label, *cells)
    table.caption = (f"▲/▼: significantly better/worse than {baseline.name} (two-sided t-test, p < {ALPHA}: paired "
                     "by seed where both ran the same seeds, Welch's otherwise; no correction for multiple "
                     "comparisons); bold green: a best that is significantly better than every other setting")
    return table


def load_settings(paths: Sequence[str | Path]) -> list[Setting]:
    """The settings of the run directories and sweep roots in ``paths``."""
    return group_runs([load_run(p) for p in expand(paths)])
