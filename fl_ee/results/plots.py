"""Plots of a run directory (matplotlib figures, no pyplot): one colour per tier, the same in every plot.

Each plot is a function of a :class:`~fl_ee.results.report.Run` returning a figure, or raising
:class:`Skip` with the reason when the run has no data for it (an unfinished run has no
``clients.csv``; a run without device emulation has no virtual clock).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from fl_ee.results.rundir import CLIENTS, Run, get

OUTCOME_HATCHES = {"ok": "", "late": "//", "unavailable": "..", "failed": "xx"}
NO_CLOCK = "no virtual clock in rounds.jsonl (device emulation was off)"
NO_CLIENTS = "no clients.csv (the run did not finish)"
NO_SUMMARY = "no summary.json (the run did not finish)"
NO_EVALUATION = "no client was evaluated"


class Skip(Exception):
    """The run holds no data for this plot; the message says why."""


def _no_evaluation(run: Run) -> Skip:
    why = " (strategy.fraction_evaluate = 0)" if run.config.strategy.fraction_evaluate == 0 else ""
    return Skip(NO_EVALUATION + why)


def tier_colours(tiers: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per tier, by its position in the config."""
    tab10 = matplotlib.colormaps["tab10"]
    palette = [tab10(i) for i in range(tab10.N)]
    return {t: palette[i % len(palette)] for i, t in enumerate(tiers)}


def _axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _label(run: Run, tier: str) -> str:
    width = run.width(tier)
    return f"{tier} (depth {run.depth(tier)}{f', width {width:g}' if width < 1 else ''})"


def _points(xs: Sequence[float], values: Sequence[Any]) -> list[tuple[float, float]]:
    """(x, accuracy in %) for each value that is a number."""
    return [(x, 100 * y) for x, y in zip(xs, values) if isinstance(y, (int, float))]


def _global_deepest(record: dict[str, Any]) -> Any:
    """The global model's accuracy at its deepest exit in an evaluation record (``None`` without one)."""
    by_exit = get(record, "evaluate", "global", "by_exit")
    return by_exit[max(by_exit, key=int)] if isinstance(by_exit, dict) and by_exit else None


def _accuracy_lines(run: Run, records: list[dict[str, Any]], xs: list[float], xlabel: str, title: str) -> Figure:
    """Personalised accuracy per tier and of all clients, and the global model's at its deepest exit."""
    means = _points(xs, [get(r, "evaluate", "personalised", "mean") for r in records])
    deepest = _points(xs, [_global_deepest(r) for r in records])
    if not means and not deepest:
        raise _no_evaluation(run)
    fig, ax = _axes(title, xlabel, "accuracy (%)")
    colours = tier_colours(run.tiers)
    for tier in run.tiers:
        points = _points(xs, [get(r, "evaluate", "personalised", "by_tier", tier) for r in records])
        if points:
            ax.plot(*zip(*points), marker="o", color=colours[tier], label=_label(run, tier))
    if means:
        ax.plot(*zip(*means), "k--", marker=".", label="all clients")
    if deepest:
        ax.plot(*zip(*deepest), color="0.45", linestyle="-.", marker="s", markersize=4,
                label="global model (deepest exit)")
    _legend(ax)
    return fig


def _legend(ax: Axes) -> None:
    ax.legend(title="accuracy at each client's deepest exit", fontsize="small", title_fontsize="small")


def round_axis(ax: Axes, rounds: Sequence[int]) -> None:
    """Whole rounds on the x axis; where ``rounds`` holds a single round, that tick alone and a note below."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(set(rounds)) == 1:
        only = rounds[0]
        ax.set_xlim(only - 1, only + 1)
        ax.set_xticks([only])
        ax.set_xlabel(f"{ax.get_xlabel()}\n(one evaluation only, after round {only}: "
                      "more rounds or a smaller eval_every draw a curve)")


def accuracy_over_rounds(run: Run) -> Figure:
    """Personalised accuracy per tier, and the global model's, at each evaluation round."""
    records = run.evaluations
    if not records:
        raise Skip("no evaluation round in rounds.jsonl yet")
    rounds = [r["round"] for r in records]
    fig = _accuracy_lines(run, records, rounds, "round", "Accuracy over rounds")
    round_axis(fig.axes[0], rounds)
    return fig


def accuracy_over_time(run: Run) -> Figure:
    """Personalised accuracy per tier, and the global model's, against the virtual clock."""
    records = [r for r in run.evaluations if "clock" in r]
    if not records:
        raise Skip(NO_CLOCK)
    fig = _accuracy_lines(run, records, [r["clock"]["virtual_time_s"] for r in records], "virtual time (s)",
                          "Accuracy over virtual time")
    reached = get(run.summary, "time_to_accuracy_s")
    if reached is not None:
        ax = fig.axes[0]
        ax.axvline(reached, color="0.3", linestyle=":", label=f"target reached at {reached:,.0f} s")
        _legend(ax)
    return fig


def client_accuracies(run: Run) -> dict[str, list[float]]:
    """Each tier's evaluated participating clients' accuracy at their deepest exit, from ``clients.csv``.

    Raises :class:`Skip` naming the file and line where ``clients.csv`` is missing, damaged
    (a column gone, a cell that is not a number, a truncated line) or holds no evaluation.
    """
    if not run.clients:
        raise Skip(NO_CLIENTS)
    where = run.path / CLIENTS
    columns = set(run.clients[0])
    for needed in ("tier", "depth", "evaluated_round"):
        if needed not in columns:
            raise Skip(f"{where}: no {needed} column (the file is damaged)")
    found: dict[str, list[float]] = {t: [] for t in run.tiers}
    for line, row in enumerate(run.clients, start=2):  # line 1 is the header
        if None in row or any(v is None for v in row.values()):
            raise Skip(f"{where}: line {line} does not have one cell per column (the file is damaged)")
        if row["evaluated_round"] == "" or row["tier"] not in found or row.get("unseen") == "1":
            continue
        if not row["depth"].isdigit():
            raise Skip(f"{where}: line {line}: depth {row['depth']!r} is not a whole number")
        column = f"accuracy_exit{row['depth']}"
        if column not in columns:
            raise Skip(f"{where}: no {column} column (the file is damaged)")
        try:
            found[row["tier"]].append(float(row[column]))
        except ValueError:
            raise Skip(f"{where}: line {line}: {column} {row[column]!r} is not a number") from None
    if not any(found.values()):
        raise _no_evaluation(run)
    return found


def client_accuracy_cdf(run: Run) -> Figure:
    """Empirical CDF of the clients' accuracy at their deepest exit, per tier."""
    by_tier = client_accuracies(run)
    fig, ax = _axes("Client accuracy CDF by tier", "client accuracy at its deepest exit (%)", "fraction of clients")
    colours = tier_colours(run.tiers)
    for tier in run.tiers:
        values = [100 * v for v in by_tier[tier]]
        if values:
            ax.ecdf(values, color=colours[tier], label=f"{_label(run, tier)}, {len(values)} clients")
    ax.set_xlim(0, 100)
    ax.legend(fontsize="small", loc="upper left")
    return fig


def _tier_efficiency(run: Run) -> dict[str, Any]:
    """``efficiency.by_tier`` of the summary."""
    if run.summary is None:
        raise Skip(NO_SUMMARY)
    by_tier = get(run.summary, "efficiency", "by_tier")
    if not isinstance(by_tier, dict):
        raise Skip("summary.json has no efficiency by tier (a run from an older fl-ee)")
    if not any(isinstance(v, dict) for v in by_tier.values()):
        raise _no_evaluation(run)
    return by_tier


def exit_distribution_by_tier(run: Run) -> Figure:
    """Share of each tier's test samples leaving at each exit under the exit policy."""
    by_tier = _tier_efficiency(run)
    policy, depth = run.config.exit_policy, run.config.max_depth
    fig, ax = _axes(f"Exit distribution by tier ({policy.name} policy, threshold {policy.threshold})",
                    "exit", "share of the tier's test samples (%)")
    colours, width = tier_colours(run.tiers), 0.8 / len(run.tiers)
    for j, tier in enumerate(run.tiers):
        shares = get(by_tier, tier, "exit_distribution")
        if isinstance(shares, dict):
            xs = [i + 1 + (j - (len(run.tiers) - 1) / 2) * width for i in range(depth)]
            ax.bar(xs, [100 * (shares.get(str(i + 1)) or 0.0) for i in range(depth)], width, color=colours[tier],
                   label=_label(run, tier))
    ax.set_xticks(range(1, depth + 1), [f"exit {i}" for i in range(1, depth + 1)])
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small")
    return fig


def accuracy_vs_flops(run: Run) -> Figure:
    """Per tier, every exit policy's accuracy against FLOPs per sample over its threshold grid.

    Also the Pareto front over all of them, and the deployed point (the configured
    policy, rule and scope).
    """
    budgeted = get(run.summary, "deployment", "budgeted", "by_tier")
    if budgeted is None:
        raise Skip("no deployment.budgeted in summary.json (the run did not finish, or an older fl-ee wrote it)")
    tiers = [t for t in run.tiers if isinstance(budgeted.get(t), dict)]
    if not tiers:
        raise _no_evaluation(run)
    anytime = get(run.summary, "deployment", "anytime") or {}
    fig = Figure(figsize=(4.2 * len(tiers), 4.2), layout="constrained")
    axes = fig.subplots(1, len(tiers), squeeze=False)[0]
    markers = dict(zip(budgeted[tiers[0]]["curves"], "os^D"))
    for ax, tier in zip(axes, tiers):
        curves = budgeted[tier]["curves"]
        for name, curve in curves.items():
            ax.plot([f / 1e6 for f in curve["expected_flops"]], [100 * a for a in curve["accuracy"]],
                    marker=markers.get(name, "o"), markersize=3, linewidth=1, alpha=0.7, label=name)
        front = [curves[name] for name, _ in budgeted[tier]["pareto"]]
        ax.plot([c["expected_flops"][j] / 1e6 for c, (_, j) in zip(front, budgeted[tier]["pareto"])],
                [100 * c["accuracy"][j] for c, (_, j) in zip(front, budgeted[tier]["pareto"])],
                "k--", linewidth=1.5, label="Pareto front")
        here = get(anytime, "by_tier", tier)
        if isinstance(here, dict) and here.get("expected_flops") is not None:
            ax.scatter([here["expected_flops"] / 1e6], [100 * here["accuracy"]], marker="*", s=250,
                       color=tier_colours(run.tiers)[tier], edgecolors="black", zorder=3, label="deployed")
        ax.set(title=_label(run, tier), xlabel="expected MFLOPs per sample", ylabel="accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"Accuracy vs. cost over thresholds; deployed: {get(anytime, 'policy')}, "
                 f"{get(anytime, 'thresholds')} thresholds, {get(anytime, 'scope')} scope")
    return fig


def reliability_diagram(run: Run) -> Figure:
    """Accuracy against confidence over all exits and clients, before and after temperature scaling."""
    calibration = get(run.summary, "calibration")
    if calibration is None:
        raise Skip("no calibration in summary.json (the run did not finish, or an older fl-ee wrote it)")
    if get(calibration, "reliability", "before") is None:
        raise _no_evaluation(run)
    fig, ax = _axes("Reliability of the exits (every exit of every client)", "confidence", "accuracy")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=1, label="perfectly calibrated")
    for key, style, name in (("before", "o--", "before scaling"), ("after", "s-", "after temperature scaling")):
        bins = [b for b in calibration["reliability"][key] if b[0] > 0]
        ece = get(calibration, "ece" if key == "before" else "ece_calibrated")
        ax.plot([b[2] / b[0] for b in bins], [b[1] / b[0] for b in bins], style,
                label=f"{name} (ECE {100 * ece:.1f}%)" if ece is not None else name)
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize="small")
    return fig


def _clocks(run: Run) -> list[dict[str, Any]]:
    if not run.has_clock:
        raise Skip(NO_CLOCK)
    return run.clocks


def round_times(run: Run) -> Figure:
    """Histogram of round times (virtual), and each tier's client times."""
    clocks = _clocks(run)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.hist([c["round_time_s"] for c in clocks], bins=min(20, max(5, len(clocks) // 2)), color="0.5")
    for q, style in (("p50", "-"), ("p90", "--")):
        value = get(run.summary, "stragglers", "round_time_s", q)
        if value is not None:
            left.axvline(value, color="black", linestyle=style, label=f"{q} {value:,.1f} s")
    left.set(title=f"Round time over {len(clocks)} rounds", xlabel="round time (virtual s)", ylabel="rounds")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize="small")
    colours = tier_colours(run.tiers)
    times = {t: [c["time_s"] for k in clocks for c in k["clients"] if c["tier"] == t and c["time_s"] is not None]
             for t in run.tiers}
    tiers = [t for t in run.tiers if times[t]]
    if tiers:
        boxes = right.boxplot([times[t] for t in tiers], tick_labels=[_label(run, t) for t in tiers],
                              patch_artist=True, medianprops={"color": "black"})
        for patch, tier in zip(boxes["boxes"], tiers):
            patch.set_facecolor(colours[tier])
    else:  # every sampled client was offline
        right.text(0.5, 0.5, "no client ran in any round", ha="center", va="center", transform=right.transAxes)
    right.set(title="Client time by tier", xlabel="tier", ylabel="client time per round (virtual s)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return fig


def participation_by_tier(run: Run) -> Figure:
    """Outcomes of the sampled clients per tier over all rounds: ok, late, unavailable, failed."""
    outcomes = get(run.stragglers, "outcomes_by_tier")
    if outcomes is None:
        raise Skip(NO_CLOCK if not run.has_clock else "summary.json has no outcomes by tier (an older fl-ee)")
    fig, ax = _axes("Participation by tier (all rounds)", "tier", "share of sampled clients (%)")
    colours = tier_colours(run.tiers)
    labels = []
    for i, tier in enumerate(run.tiers):
        counts = outcomes.get(tier, {})
        sampled = counts.get("sampled", 0)
        labels.append(f"{_label(run, tier)}\n{sampled} sampled")
        bottom = 0.0
        for outcome, hatch in OUTCOME_HATCHES.items():
            share = 100 * counts.get(outcome, 0) / sampled if sampled else 0.0
            ax.bar(i, share, 0.6, bottom=bottom, color=colours[tier], alpha=1.0 if outcome == "ok" else 0.4,
                   hatch=hatch, edgecolor="black", linewidth=0.5)
            if outcome == "ok" and sampled:
                ax.text(i, 101, f"ok {share:.0f}%", ha="center", va="bottom", weight="bold")
            bottom += share
    ax.set_xticks(range(len(run.tiers)), labels)
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 20))
    ax.legend(handles=[Patch(facecolor="0.6", alpha=1.0 if o == "ok" else 0.4, hatch=h, edgecolor="black", label=o)
                       for o, h in OUTCOME_HATCHES.items()], fontsize="small", loc="upper center",
              ncols=len(OUTCOME_HATCHES))
    return fig


PLOTS: dict[str, Callable[[Run], Figure]] = {
    "accuracy_rounds": accuracy_over_rounds,
    "accuracy_time": accuracy_over_time,
    "client_accuracy_cdf": client_accuracy_cdf,
    "exit_distribution": exit_distribution_by_tier,
    "accuracy_vs_flops": accuracy_vs_flops,
    "reliability": reliability_diagram,
    "round_time": round_times,
    "participation": participation_by_tier,
}


def render_plots(run: Any, plots: Mapping[str, Callable[[Any], Figure]] = PLOTS) -> tuple[dict[str, bytes],
                                                                                          dict[str, str]]:
    """Every plot of ``run`` (or of what ``plots`` take) as PNG bytes by name, and the skipped ones with the reason."""
    images, skipped = {}, {}
    for name, plot in plots.items():
        try:
            figure = plot(run)
        except Skip as why:
            skipped[name] = str(why)
            continue
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # a damaged or foreign file
            skipped[name] = f"the run directory's files do not hold what it needs ({type(exc).__name__}: {exc})"
            continue
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        images[name] = buffer.getvalue()
    return images, skipped


def write_plots(run_dir: Path, images: dict[str, bytes]) -> Path:
    """Write the PNGs under ``run_dir/plots/``; return that folder."""
    folder = run_dir / "plots"
    folder.mkdir(exist_ok=True)
    for name, png in images.items():
        (folder / f"{name}.png").write_bytes(png)
    return folder
