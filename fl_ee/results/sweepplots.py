"""Plots of settings over seeds (``fl-ee report SWEEP_ROOT --plots``), in the style of :mod:`fl_ee.results.plots`.

``metrics.png``: every headline metric, each setting's mean with its 95% Student-t
interval and its seeds as dots, the settings named on the x axis in the order of the
table. ``accuracy_rounds.png``: personalised accuracy over rounds, each setting's mean
over its seeds with the 95% interval as a band. Intervals are cut at the metric's range
(with two seeds a 95% interval easily spans more than 0-100%).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fl_ee.results.groups import Setting, headline
from fl_ee.results.plots import Skip, _axes, round_axis, tier_colours
from fl_ee.results.report import mflops, pct, points, ratio
from fl_ee.results.rundir import get
from fl_ee.results.stats import describe

SCALE: dict[Callable[[Any], str], float] = {pct: 100.0, points: 100.0, mflops: 1e-6}  # plotted as the tables show
RANGE: dict[Callable[[Any], str], tuple[float, float]] = {pct: (0.0, 100.0), points: (-100.0, 100.0),
                                                         ratio: (0.0, 1.0)}  # as plotted; any other: >= 0
COLUMNS = 4


def _clip(interval: Sequence[float], bounds: tuple[float, float]) -> tuple[float, float]:
    """``interval`` (low, high) cut at ``bounds``."""
    return max(interval[0], bounds[0]), min(interval[1], bounds[1])


def _keep_ylim_within(ax: Axes, bounds: tuple[float, float]) -> None:
    """The y axis ends at ``bounds`` where autoscaling would go past them."""
    ax.set_ylim(*_clip(ax.get_ylim(), bounds))


def metric_intervals(settings: Sequence[Setting]) -> Figure:
    """One panel per headline metric: each setting's mean and 95% CI over its seeds, the seeds as dots."""
    metrics = [m for m in headline(max(r.config.max_depth for s in settings for r in s.runs))
               if any(v is not None for s in settings for v in s.values(m[1]).values())]
    if not metrics:
        raise Skip("no finished run")
    colours = tier_colours([s.name for s in settings])
    rows = math.ceil(len(metrics) / COLUMNS)
    longest = max(len(s.name) for s in settings)
    fig = Figure(figsize=(3.3 * COLUMNS, 2.6 * rows + 0.6 + 0.06 * min(longest, 60)), layout="constrained")
    axes = fig.subplots(rows, COLUMNS, squeeze=False, sharex=True).ravel()
    cut = False
    for ax, (label, key, fmt, higher) in zip(axes, metrics):
        scale, bounds = SCALE.get(fmt, 1.0), RANGE.get(fmt, (0.0, math.inf))
        for i, setting in enumerate(settings):
            values = [scale * v for v in setting.values(key).values() if v is not None]
            if not values:
                continue
            stats, colour = describe(values), colours[setting.name]
            ax.scatter([i] * len(values), values, color=colour, alpha=0.35, s=14, clip_on=False)
            error = None
            if stats["ci95"] is not None:
                low, high = _clip(stats["ci95"], bounds)
                cut = cut or [low, high] != stats["ci95"]
                error = [[stats["mean"] - low], [high - stats["mean"]]]
            ax.errorbar([i], [stats["mean"]], yerr=error, fmt="o", color=colour, capsize=5, clip_on=False)
        _keep_ylim_within(ax, bounds)
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)", fontsize="small")
        ax.grid(alpha=0.3)
    axes[0].set_xticks(range(len(settings)), [s.name for s in settings])  # shared by every panel
    axes[0].set_xlim(-0.6, len(settings) - 0.4)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    for ax in axes[max(0, len(metrics) - COLUMNS):len(metrics)]:  # the lowest panel of each column names them
        ax.xaxis.set_tick_params(labelbottom=True, labelrotation=30, labelsize="small")
        for tick in ax.get_xticklabels():
            tick.set(horizontalalignment="right", rotation_mode="anchor")
    fig.suptitle("Settings: mean and 95% CI over seeds (dots: the seeds)"
                 + ("; intervals cut where they pass the metric's range" if cut else ""))
    return fig


def accuracy_band(settings: Sequence[Setting]) -> Figure:
    """Personalised accuracy at each evaluation round: each setting's mean over its seeds, the 95% CI as a band.

    A round counts where every seed of the setting evaluated in it.
    """
    fig, ax = _axes("Personalised accuracy over rounds (mean and 95% CI over seeds)", "round",
                    "personalised accuracy (%)")
    colours = tier_colours([s.name for s in settings])
    plotted: list[int] = []
    for setting in settings:
        by_round: dict[int, list[float]] = {}
        for run in setting.runs:
            for record in run.evaluations:
                if (mean := get(record, "evaluate", "personalised", "mean")) is not None:
                    by_round.setdefault(record["round"], []).append(100 * mean)
        rounds = sorted(r for r, values in by_round.items() if len(values) == len(setting.runs))
        if not rounds:
            continue
        stats = [describe(by_round[r]) for r in rounds]
        colour = colours[setting.name]
        plotted += rounds
        ax.plot(rounds, [d["mean"] for d in stats], marker="o", color=colour,
                label=f"{setting.name} ({len(setting.runs)} seeds)")
        banded = [(r, d["mean"], _clip(d["ci95"], RANGE[pct])) for r, d in zip(rounds, stats) if d["ci95"]]
        if len(banded) == 1:  # a band of one round has no width
            (r, mean, (low, high)), = banded
            ax.errorbar([r], [mean], yerr=[[mean - low], [high - mean]], color=colour, alpha=0.4, capsize=5)
        elif banded:
            ax.fill_between([r for r, _, _ in banded], [ci[0] for _, _, ci in banded],
                            [ci[1] for _, _, ci in banded], color=colour, alpha=0.2, linewidth=0)
    if not plotted:
        raise Skip("no evaluation round that every seed of a setting logged")
    _keep_ylim_within(ax, RANGE[pct])
    round_axis(ax, plotted)
    ax.legend(fontsize="small")
    return fig


SWEEP_PLOTS: dict[str, Callable[[Sequence[Setting]], Figure]] = {
    "metrics": metric_intervals,
    "accuracy_rounds": accuracy_band,
}
