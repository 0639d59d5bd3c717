"""``fl-ee reproduce``: a recipe's runs as a sweep, then fl-ee's figures beside the paper's and a verdict per claim.

The runs are an ordinary sweep (:mod:`fl_ee.studies.sweep`): one setting folder per
recipe setting, ``seed-<s>`` runs in it, ``sweep.json``, resumable by running the same
command again. The run root then holds ``reproduce.json`` and ``reproduce.md`` (both
replaced atomically): per setting and metric the published figure beside fl-ee's mean and
95% confidence interval over the seeds, and per claim its verdict. A claim ``better >
than`` on a metric is tested as ``fl-ee compare`` tests (paired t-test over the seeds
both settings ran, Welch's otherwise; two-sided, p < 0.05): it *holds* where the
difference is significant and in the paper's direction, is *reversed* where it is
significant the other way, *not significant* otherwise, and *untested* below two seeds.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from fl_ee.core.atomic import atomic_write
from fl_ee.core.config import parse_overrides
from fl_ee.core.errors import UserError
from fl_ee.results.groups import Setting
from fl_ee.results.rundir import load_run, to_json
from fl_ee.results.stats import ALPHA, LEVEL, Significance, compare_seeds, describe
from fl_ee.studies.recipes import (
    ACCURACIES,
    Recipe,
    Scale,
    Verdict,
    check_result_free,
    exit_of,
    load_recipe,
)
from fl_ee.studies.sweep import Job, check_jobs, plan_settings, run_planned

REPRODUCE_JSON = "reproduce.json"
REPRODUCE_MD = "reproduce.md"
Values = Mapping[int, float | None]  # a metric by seed


# ------------------------------------------------------------------------------ verdicts


def verdict(result: Significance | None) -> Verdict:
    """The verdict on ``better > than`` from the test of ``better - than`` (``None``: too few seeds to test)."""
    if result is None:
        return "untested"
    if not result.significant:
        return "not significant"
    return "holds" if result.difference > 0 else "reversed"


def combined(verdicts: Sequence[Verdict]) -> Verdict:
    """A claim over several metrics: reversed if any is, holds if all do, untested if one is, else not significant."""
    if "reversed" in verdicts:
        return "reversed"
    if all(v == "holds" for v in verdicts):
        return "holds"
    return "untested" if "untested" in verdicts else "not significant"


def judge(better: Values, than: Values) -> tuple[Verdict, Significance | None]:
    """The verdict on ``better > than`` (values by seed) and its test (of ``better - than``)."""
    result = compare_seeds(than, better)
    return verdict(result), result


# ------------------------------------------------------------------------------ the table


def metric_order(metric: str) -> tuple[int, int]:
    """Personalised accuracies first (in :data:`ACCURACIES`' order), then the global exits, then their ensemble."""
    index = exit_of(metric)
    if index is not None:
        return (len(ACCURACIES) - 1, index)
    position = ACCURACIES.index(metric)
    return (position if metric != "global_ensemble" else len(ACCURACIES), 0)


def shown_metrics(recipe: Recipe, setting: str) -> list[str]:
    """The metrics of ``setting`` the table shows: its published ones and those of the claims about it."""
    named = set(recipe.settings[setting].published)
    named |= {m for c in recipe.claims if setting in (c.better, c.than) for m in c.metrics}
    return sorted(named, key=metric_order)


def _published(recipe: Recipe, setting: str, metric: str) -> float | None:
    value = recipe.settings[setting].published.get(metric)
    return None if value is None else value / 100


def _test(result: Significance | None) -> dict[str, Any] | None:
    return None if result is None else {"test": result.test, "difference": result.difference, "t": result.t,
                                        "df": result.df, "p": result.p, "significant": result.significant}


def reproduction(recipe: Recipe, scale: Scale, measured: Mapping[str, Mapping[str, Values]]) -> dict[str, Any]:
    """``reproduce.json`` without its runs: published and measured figures side by side, and each claim's verdict.

    ``measured`` holds, per setting and metric, the values by seed (fractions; ``None``
    where a run has none). Published figures are stored as fractions too.
    """
    settings = {}
    for name, spec in recipe.settings.items():
        metrics = {}
        for metric in shown_metrics(recipe, name):
            values = dict(measured.get(name, {}).get(metric, {}))
            metrics[metric] = {"published": _published(recipe, name, metric), **describe(list(values.values())),
                               "values": values}
        settings[name] = {"label": spec.label, "source": spec.source, "set": spec.set, "metrics": metrics}
    claims = []
    for claim in recipe.claims:
        per_metric: dict[str, dict[str, Any]] = {}
        verdicts: list[Verdict] = []
        for metric in claim.metrics:
            better, than = (measured.get(s, {}).get(metric, {}) for s in (claim.better, claim.than))
            found, result = judge(better, than)
            high, low = (_published(recipe, s, metric) for s in (claim.better, claim.than))
            gap = None if high is None or low is None else high - low
            per_metric[metric] = {"published_gap": gap, "verdict": found, "vs": _test(result)}
            verdicts.append(found)
        claims.append({"says": claim.says, "better": claim.better, "than": claim.than, "verdict": combined(verdicts),
                       "metrics": per_metric})
    chosen = recipe.scales[scale]
    return {"recipe": recipe.name, "title": recipe.title, "paper": recipe.paper, "url": recipe.url,
            "source": recipe.source, "setting": recipe.setting, "scale": scale, "config": chosen.config,
            "set": chosen.set, "gives_up": chosen.gives_up, "level": LEVEL, "alpha": ALPHA, "settings": settings,
            "claims": claims}


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _gap(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def _measured(stats: Mapping[str, Any]) -> str:
    if stats["mean"] is None:
        return "-"
    if stats["ci95"] is None:
        return _pct(stats["mean"])
    return f"{_pct(stats['mean'])} ± {100 * (stats['ci95'][1] - stats['mean']):.1f}"


def figure_rows(report: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The side-by-side table: setting, metric, published, fl-ee's mean ± half the 95% CI, their gap, seeds."""
    rows: list[tuple[str, ...]] = []
    for name, setting in report["settings"].items():
        for metric, stats in setting["metrics"].items():
            difference = None if stats["mean"] is None or stats["published"] is None else \
                stats["mean"] - stats["published"]
            rows.append((name, metric, _pct(stats["published"], 2), _measured(stats), _gap(difference),
                         str(stats["n"])))
    return rows


def claim_rows(report: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The claims' table: claim, metric, published gap, fl-ee's gap, the test's p, the metric's verdict, the claim's."""
    rows: list[tuple[str, ...]] = []
    for i, claim in enumerate(report["claims"], 1):
        for j, (metric, found) in enumerate(claim["metrics"].items()):
            test = found["vs"]
            rows.append((f"{i}. {claim['says']} ({claim['better']} > {claim['than']})" if j == 0 else "", metric,
                         _gap(found["published_gap"]), _gap(test["difference"]) if test else "-",
                         f"{test['p']:.3g}" if test else "-", found["verdict"], claim["verdict"] if j == 0 else ""))
    return rows


FIGURE_HEADERS = ("setting", "metric", "published %", "fl-ee % (mean ± 95% CI)", "fl-ee - published", "seeds")
CLAIM_HEADERS = ("claim", "metric", "published gap", "fl-ee gap", "p", "verdict", "claim's verdict")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(headers), "|" + "---|" * len(headers), *map(line, rows)]


def markdown(report: Mapping[str, Any]) -> str:
    """``reproduce.md``: the recipe, what this scale gives up, the figures side by side and the claims' verdicts."""
    runs = report["runs"]
    lines = [f"# {report['title']}", "", f"fl-ee reproduction, `{report['scale']}` scale, recipe `{report['recipe']}`.",
             "", f"- Paper: {report['paper']}" + (f" <{report['url']}>" if report["url"] else ""),
             f"- Published figures: {report['source']}", f"- The paper's setting: {report['setting']}",
             f"- This scale: `{report['config']}` with {', '.join(f'`{s}`' for s in report['set']) or 'no overrides'}",
             f"- What it gives up: {report['gives_up'] or 'nothing'}",
             f"- Seeds {', '.join(map(str, report['seeds']))}: {runs['finished']} of {runs['total']} runs finished"
             + (f", {len(runs['failed'])} failed" if runs["failed"] else ""), "", "## Figures", "",
             *_md_table(FIGURE_HEADERS, figure_rows(report)), "", "## Claims", "",
             *_md_table(CLAIM_HEADERS, claim_rows(report)), "",
             f"Verdicts: two-sided t-test of fl-ee's difference over the seeds (paired where both settings ran the "
             f"same seeds, Welch's otherwise), p < {report['alpha']}; holds = significant in the paper's direction, "
             "reversed = significant the other way, untested = fewer than two seeds. Gaps in points."]
    return "\n".join(lines) + "\n"


def renderables(report: Mapping[str, Any]) -> list[Any]:
    """What the terminal shows: the recipe and what this scale gives up, then the two tables (fitted to its width)."""
    from rich.text import Text

    from fl_ee.results.fit import Col, Sheet

    header = Text.assemble((report["title"], "bold"), f"\n{report['paper']}\n",
                           (f"{report['scale']} scale gives up: ", "bold"), report["gives_up"] or "nothing")
    figures = Sheet(f"Published and fl-ee ({report['scale']} scale)",
                    [Col(h, "left" if i < 2 else "right") for i, h in enumerate(FIGURE_HEADERS)], keys=2)
    for row in figure_rows(report):
        figures.add_row(*row)
    figures.caption = f"fl-ee: mean ± half the {report['level']:.0%} CI over the seeds; published: {report['source']}"
    claims = Sheet("Claims", [Col(h, "left" if i in (0, 1, 5, 6) else "right") for i, h in enumerate(CLAIM_HEADERS)],
                   keys=1)
    for row in claim_rows(report):
        claims.add_row(*row)
    claims.caption = (f"two-sided t-test of fl-ee's difference, p < {report['alpha']}: holds / not significant / "
                      "reversed; untested below two seeds; gaps in points")
    return [header, figures, claims]


# ------------------------------------------------------------------------------ the command


def default_root(recipe: str, scale: Scale) -> Path:
    """``reproductions/<recipe>-<scale>`` under the working directory: the same command continues it."""
    return Path("reproductions") / f"{recipe}-{scale}"


def check_exits(recipe: Recipe, jobs: Sequence[Job]) -> None:
    """Refuse a metric ``global_exit<i>`` past the deepest exit a setting's tiers hold."""
    depth = {j.setting: j.cfg.max_depth for j in jobs}
    for name in recipe.settings:
        for metric in shown_metrics(recipe, name):
            if (index := exit_of(metric)) is not None and index > depth[name]:
                raise UserError(f"recipe {recipe.name}: {metric} is past the deepest exit the tiers of setting "
                                f"{name} hold ({depth[name]})")


def measured_values(recipe: Recipe, jobs: Sequence[Job]) -> dict[str, dict[str, dict[int, float | None]]]:
    """Per setting and shown metric, the finished runs' values by seed."""
    out: dict[str, dict[str, dict[int, float | None]]] = {}
    for name in recipe.settings:
        setting = Setting(name, tuple(load_run(j.path) for j in jobs if j.setting == name and j.finished))
        out[name] = {metric: setting.values(metric) for metric in shown_metrics(recipe, name)}
    return out


def cmd_reproduce(spec: str, scale: Scale, seeds: list[int], out: str | None, sets: list[str], parallel: int,
                  as_json: bool) -> int:
    """``fl-ee reproduce``: validate the recipe's runs, run the unfinished ones, judge (exit 1: a run failed)."""
    check_jobs(parallel)
    recipe, folder = load_recipe(spec)
    check_result_free(parse_overrides(sets))
    root = Path(out) if out else default_root(recipe.name, scale)
    chosen, config = recipe.scales[scale], recipe.config_of(scale, folder)
    named = {name: s.set for name, s in recipe.settings.items()}
    err = Console(stderr=True, soft_wrap=True)
    jobs = plan_settings(config, [*chosen.set, *sets], named, seeds, root, err)
    check_exits(recipe, jobs)
    failed = run_planned(jobs, root, {"recipe": recipe.name, "scale": scale, "config": config,
                                      "set": [*chosen.set, *sets], "settings": named, "seeds": seeds}, parallel, err)
    report = {**reproduction(recipe, scale, measured_values(recipe, jobs)), "seeds": seeds,
              "runs": {"total": len(jobs), "finished": sum(j.finished for j in jobs), "failed": failed}}
    atomic_write(root / REPRODUCE_JSON, to_json(report, indent=2) + "\n")
    atomic_write(root / REPRODUCE_MD, markdown(report))
    if as_json:
        sys.stdout.write(to_json(report, indent=2) + "\n")
    else:
        console = Console()
        for part in renderables(report):
            console.print(part)
    err.print(f"side by side in {root / REPRODUCE_MD} (and {REPRODUCE_JSON})" + (
        f"; {len(failed)} runs failed (see their logs); the same command runs them again" if failed else ""))
    return 1 if failed else 0
