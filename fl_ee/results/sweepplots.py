"""Plots of settings over seeds (``fl-ee report SWEEP_ROOT --plots``), in the style of :mod:`fl_ee.results.plots`.

``metrics.png``: every headline metric, each setting's mean with its 95% Student-t
interval and its seeds as dots. ``accuracy_rounds.png``: personalised accuracy over
rounds, each setting's mean over its seeds with the 95% interval as a band.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fl_ee.results.groups import Setting, headline
from fl_ee.results.plots import Skip, _axes, tier_colours
from fl_ee.results.report import mflops, pct, points
from fl_ee.results.rundir import get
from fl_ee.results.stats import describe

SCALE: dict[Callable[[Any], str], float] = {pct: 100.0, points: 100.0, mflops: 1e-6}  # plotted as the tables show
COLUMNS = 4


def metric_intervals(settings: Sequence[Setting]) -> Figure:
    """One panel per headline metric: each setting's mean and 95% CI over its seeds, the seeds as dots."""
    metrics = [m for m in headline(max(r.config.max_depth for s in settings for r in s.runs))
               if any(v is not None for s in settings for v in s.values(m[1]).values())]
    if not metrics:
        raise Skip("no finished run")
    colours = tier_colours([s.name for s in settings])
    rows = math.ceil(len(metrics) / COLUMNS)
    fig = Figure(figsize=(3.3 * COLUMNS, 2.6 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, COLUMNS, squeeze=False).ravel()
    for ax, (label, key, fmt, higher) in zip(axes, metrics):
        scale = SCALE.get(fmt, 1.0)
        for i, setting in enumerate(settings):
            values = [scale * v for v in setting.values(key).values() if v is not None]
            if not values:
                continue
            stats, colour = describe(values), colours[setting.name]
            ax.scatter([i] * len(values), values, color=colour, alpha=0.35, s=14)
            low_high = stats["ci95"]
            error = None if low_high is None else [[stats["mean"] - low_high[0]], [low_high[1] - stats["mean"]]]
            ax.errorbar([i], [stats["mean"]], yerr=error, fmt="o", color=colour, capsize=5)
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)", fontsize="small")
        ax.set_xticks(range(len(settings)), [str(i + 1) for i in range(len(settings))])
        ax.set_xlim(-0.6, len(settings) - 0.4)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    fig.legend(handles=[Line2D([], [], marker="o", color=colours[s.name], label=f"{i + 1}: {s.name}")
                        for i, s in enumerate(settings)], loc="outside lower center", fontsize="small",
               ncols=min(len(settings), 3))
    fig.suptitle("Settings: mean and 95% CI over seeds (dots: the seeds)")
    return fig


def accuracy_band(settings: Sequence[Setting]) -> Figure:
    """Personalised accuracy at each evaluation round: each setting's mean over its seeds, the 95% CI as a band.

    A round counts where every seed of the setting evaluated in it.
    """
    fig, ax = _axes("Personalised accuracy over rounds (mean and 95% CI over seeds)", "round",
                    "personalised accuracy (%)")
    colours = tier_colours([s.name for s in settings])
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
        ax.plot(rounds, [d["mean"] for d in stats], marker="o", color=colour,
                label=f"{setting.name} ({len(setting.runs)} seeds)")
        banded = [(r, d["ci95"]) for r, d in zip(rounds, stats) if d["ci95"] is not None]
        if banded:
            ax.fill_between([r for r, _ in banded], [ci[0] for _, ci in banded], [ci[1] for _, ci in banded],
                            color=colour, alpha=0.2, linewidth=0)
    if not ax.lines:
        raise Skip("no evaluation round that every seed of a setting logged")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    return fig


SWEEP_PLOTS: dict[str, Callable[[Sequence[Setting]], Figure]] = {
    "metrics": metric_intervals,
    "accuracy_rounds": accuracy_band,
}
