"""Tables from a run directory alone, for ``fl-ee run``, ``fl-ee report`` and ``fl-ee compare``.

A run directory holds ``config.toml`` and ``rounds.jsonl`` from the start, and
``clients.csv`` and ``summary.json`` once the run finished; an interrupted run is
reported from what its rounds log holds. The virtual clock (``clock`` in each round,
``stragglers``/``virtual_time_s``/``time_to_accuracy_s`` in the summary) comes from
device emulation and is shown only where present.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from fl_ee.core.config import Config
from fl_ee.core.metrics import spread
from fl_ee.results.fit import Blocks, Col, Sheet
from fl_ee.results.rundir import Run, get

RECENT_EVALUATIONS = 10  # rows of the accuracy-over-rounds table


# ---------------------------------------------------------------------------- formats


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal; ``-`` for none."""
    return "-" if value is None else f"{100 * value:.1f}"


def mflops(value: float | None) -> str:
    """FLOPs as MFLOPs with three decimals; ``-`` for none."""
    return "-" if value is None else f"{value / 1e6:.3f}"


def secs(value: float | None) -> str:
    """Seconds with one decimal; ``-`` for none."""
    return "-" if value is None else f"{value:,.1f}"


def ratio(value: float | None) -> str:
    """A ratio with three decimals; ``-`` for none."""
    return "-" if value is None else f"{value:.3f}"


def points(value: float | None) -> str:
    """A difference of fractions in percentage points; ``-`` for none."""
    return "-" if value is None else f"{100 * value:.1f} pp"


def millis(value: float | None) -> str:
    """Milliseconds with four decimals; ``-`` for none."""
    return "-" if value is None else f"{value:.4f}"


def count(value: int | None) -> str:
    """A count; ``-`` for none."""
    return "-" if value is None else str(value)


# ------------------------------------------------------------------------------ tables


def tier_table(run: Run) -> Sheet:
    """The tier table of ``summary.json``.

    Per tier: its submodel (depth, width, forward MFLOPs of one sample through it, parameters),
    clients, participation, accuracy per exit and of the exits' ensemble, adaptive accuracy,
    FLOPs per sample under the exit policy and its saving.
    """
    cfg, s = run.config, run.summary
    exits = range(1, cfg.max_depth + 1)
    participation = get(s, "stragglers", "participation_by_tier")
    personalised = get(s, "accuracy", "personalised")
    headers = ["tier", "depth", "width", "model\nMFLOPs", "params\nk", "clients",
               *(["particip. %"] if participation else []), *(f"exit{i}" for i in exits), "ensemble", "adaptive",
               "MFLOPs", "saving %"]
    split = 6 + bool(participation)  # the tier's make-up, then its accuracy and cost
    table = Sheet(f"Personalised accuracy (%) per tier after {len(run.rounds)} rounds",
                  [Col(name, "left" if name == "tier" else "right") for name in headers],
                  groups=[range(1, split), range(split, len(headers))])

    def cells(by_exit: Any, ensemble: Any, adaptive: Any, efficiency: Any) -> list[str]:
        return [*(pct(get(by_exit, str(i))) for i in exits), pct(ensemble), pct(adaptive),
                mflops(get(efficiency, "expected_flops")), pct(get(efficiency, "flops_saving"))]

    for tier in cfg.tiers:
        share = [pct(get(participation, tier.name))] if participation else []
        accuracy = cells(get(personalised, "by_tier_exit", tier.name), get(personalised, "ensemble_by_tier", tier.name),
                         get(personalised, "adaptive_by_tier", tier.name), get(s, "efficiency", "by_tier", tier.name))
        submodel = get(s, "submodels", tier.name)
        params = get(submodel, "params")
        table.add_row(tier.name, str(tier.depth), f"{tier.width:g}", mflops(get(submodel, "flops")),
                      "-" if params is None else f"{params / 1e3:,.1f}", count(get(s, "clients", "by_tier", tier.name)),
                      *share, *accuracy)
    table.add_section()
    table.add_row("all", "", "", "", "", count(get(s, "clients", "total")), *([""] if participation else []),
                  *cells(get(personalised, "by_exit"), get(personalised, "ensemble"),
                         get(personalised, "adaptive_accuracy"), get(s, "efficiency")))
    table.add_row("global", "", "", "", "", "", *([""] if participation else []),
                  *(pct(get(run.global_by_exit, str(i))) for i in exits), pct(run.global_ensemble), "", "", "")
    notes = [f"personalised mean at each client's deepest exit: {pct(get(personalised, 'mean'))}%"]
    if s is not None and get(personalised, "evaluated_clients") == 0:
        notes.append("no client was evaluated" + (" (strategy.fraction_evaluate = 0)"
                                                  if cfg.strategy.fraction_evaluate == 0 else ""))
    table.caption = "; ".join(notes)
    return table


def progress_table(run: Run) -> Sheet:
    """Personalised accuracy at each client's deepest exit, per tier, at the latest evaluations."""
    cfg, evaluations = run.config, run.evaluations
    shown = evaluations[-RECENT_EVALUATIONS:]
    unseen = any("unseen" in r["evaluate"] for r in shown)
    headers = ["round", *(["virtual s"] if run.has_clock else []), "mean", *run.tiers, *(["unseen"] if unseen else []),
               f"global exit{cfg.max_depth}"]
    table = Sheet("Personalised accuracy (%) over rounds", [Col(name) for name in headers],
                  keys=2 if run.has_clock else 1)
    for record in shown:
        table.add_row(
            str(record["round"]),
            *([secs(get(record, "clock", "virtual_time_s"))] if run.has_clock else []),
            pct(get(record, "evaluate", "personalised", "mean")),
            *(pct(get(record, "evaluate", "personalised", "by_tier", t)) for t in run.tiers),
            *([pct(get(record, "evaluate", "unseen", "mean"))] if unseen else []),
            pct(get(record, "evaluate", "global", "by_exit", str(cfg.max_depth))),
        )
    notes = []
    if len(shown) < len(evaluations):
        notes.append(f"last {len(shown)} of {len(evaluations)} evaluations")
    if run.summary is None:
        notes.append(f"unfinished run: {len(run.rounds)} of {cfg.rounds} rounds logged")
    if run.stopped:
        notes.append(f"stopped: {run.stopped}")
    if not evaluations:
        notes.append("no evaluation yet")
    table.caption = "; ".join(notes) or None
    return table


def _key_values(title: str, rows: Sequence[tuple[str, str]], caption: str | None = None) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, caption=caption, min_width=30)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def policy_table(run: Run, wide: bool = False) -> Sheet | None:
    """The summary's ``policies`` section: each exit policy, threshold rule and scope against the deepest exit.

    The deployed one (the configured policy, rule and scope) is in bold; ``None`` before the run finishes.
    Where it does not fit whole, its latency column is left out (never with ``wide``) rather than the
    table split in parts.
    """
    p, calibration = get(run.summary, "policies"), get(run.summary, "calibration")
    if p is None:
        return None
    policy = run.config.exit_policy
    table = Sheet("Exit policies on the clients' test splits",
                  [Col("policy", "left"), Col("thresholds", "left"), Col("scope", "left"), Col("accuracy %"),
                   Col("drop"), Col("MFLOPs"), Col("saving %"), Col("latency ms")], keys=3,
                  extra=() if wide else (7,), extra_hint="`fl-ee report --wide` (or --html) shows it")
    deepest = p["deepest"]
    table.add_row("deepest exit", "", "", pct(get(deepest, "accuracy")), "", mflops(get(deepest, "expected_flops")),
                  pct(get(deepest, "flops_saving")), millis(get(deepest, "latency_ms")))
    table.add_section()
    for row in p["rows"]:
        deployed = (row["policy"], row["thresholds"]) == (policy.name, policy.thresholds) and row["scope"] in (
            policy.scope, "-")
        style = "bold" if deployed else ""
        table.add_row(*(Text(cell, style=style) for cell in (
            row["policy"], row["thresholds"], row["scope"], pct(row["accuracy"]), points(row["drop"]),
            mflops(row["expected_flops"]), pct(row["flops_saving"]), millis(row["latency_ms"]))))
    table.caption = (f"accuracy: mean over clients; FLOPs and latency (on the tier's device) per test sample; "
                     f"budget {policy.flops_budget:g} of the full submodel, max drop {100 * policy.max_drop:g} pp; "
                     f"ECE {pct(get(calibration, 'ece'))}% before, {pct(get(calibration, 'ece_calibrated'))}% after "
                     f"temperature scaling; overthinking {pct(get(calibration, 'overthinking'))}%")
    return table


def fairness_table(run: Run) -> Table | None:
    """The summary's ``fairness`` section (``None`` before the run finishes)."""
    f = get(run.summary, "fairness")
    if f is None:
        return None
    return _key_values(
        "Fairness",
        [("mean %", pct(get(f, "mean"))), ("std %", pct(get(f, "std"))), ("min %", pct(get(f, "min"))),
         ("worst 10% %", pct(get(f, "worst10"))), ("best 10% %", pct(get(f, "best10"))),
         ("bottom decile %", pct(get(f, "bottom_decile"))), ("top decile %", pct(get(f, "top_decile"))),
         ("Jain's index", ratio(get(f, "jain"))), ("Gini", ratio(get(f, "gini"))),
         ("tier gap", points(get(f, "tier_gap")))],
        caption="of personalised accuracy at each client's deepest exit"
                + (" (participating clients)" if get(run.summary, "unseen") else ""),
    )


def unseen_table(run: Run) -> Sheet | None:
    """The summary's ``unseen`` section: participating and unseen clients side by side, and the gap.

    ``None`` for a run without unseen clients (or before it finishes).
    """
    u = get(run.summary, "unseen")
    if u is None:
        return None
    mine, theirs, gap = get(run.summary, "accuracy", "personalised"), get(u, "personalised"), get(u, "gap")
    table = Sheet("Unseen clients: personalised accuracy (%)",
                  [Col("accuracy", "left"), Col("participating"), Col("unseen"), Col("gap")])
    exits = [(f"exit {i}", ("by_exit", str(i))) for i in range(1, run.config.max_depth + 1)]
    for label, keys in [("deepest exit", ("mean",)), *exits, ("ensemble", ("ensemble",)),
                        ("adaptive", ("adaptive_accuracy",))]:
        table.add_row(label, pct(get(mine, *keys)), pct(get(theirs, *keys)), points(get(gap, *keys)))
    table.add_section()
    table.add_row("evaluated clients", count(get(mine, "evaluated_clients")), count(get(theirs, "evaluated_clients")),
                  "")
    table.add_row("std", pct(get(run.summary, "fairness", "std")), pct(get(u, "fairness", "std")), "")
    table.caption = (f"{count(get(u, 'clients', 'total'))} of {count(get(run.summary, 'clients', 'total'))} clients "
                     "never trained (data.unseen_fraction); each adapts one round as its client algorithm does "
                     "before it evaluates; gap: participating minus unseen")
    return table


def efficiency_table(run: Run) -> Table | None:
    """The summary's ``efficiency`` section (``None`` before the run finishes)."""
    e = get(run.summary, "efficiency")
    if e is None:
        return None
    policy = run.config.exit_policy
    shares = get(e, "exit_distribution")
    return _key_values(
        "Efficiency",
        [*((f"exit {i} share %", pct(v)) for i, v in (shares.items() if isinstance(shares, dict) else ())),
         ("expected MFLOPs", mflops(get(e, "expected_flops"))), ("saving vs full %", pct(get(e, "flops_saving")))],
        caption=f"per test sample; {policy.name} exit policy, "
                + ((f"patience {policy.patience}" if policy.name == "patience" else f"threshold {policy.threshold}")
                   if policy.thresholds == "fixed"
                   else f"{policy.thresholds} thresholds, {policy.scope} scope"),
    )


def straggler_table(run: Run) -> Table:
    """Virtual time and stragglers from device emulation (over the logged rounds of an unfinished run)."""
    st = run.stragglers
    caption = None if st else "no virtual clock in this run"
    return _key_values(
        "Stragglers",
        [("virtual time s", secs(run.virtual_time_s)),
         ("time to accuracy s", secs(get(run.summary, "time_to_accuracy_s"))),
         ("round time p50 s", secs(get(st, "round_time_s", "p50"))),
         ("round time p90 s", secs(get(st, "round_time_s", "p90"))),
         ("round time max s", secs(get(st, "round_time_s", "max"))),
         ("late %", pct(get(st, "late_fraction"))),
         ("dropped updates", count(get(st, "dropped_updates")))],
        caption=caption,
    )


def async_table(run: Run) -> Table | None:
    """The summary's ``async`` section: each tier's share of the aggregated updates and their staleness."""
    a = get(run.summary, "async")
    if a is None:
        return None
    shares, staleness = get(a, "update_share_by_tier"), get(a, "mean_staleness_by_tier")
    tiers = list(shares) if isinstance(shares, dict) else []
    return _key_values(
        "Async updates",
        [("updates aggregated", count(get(a, "updates"))), ("mean staleness", ratio(get(a, "mean_staleness"))),
         *((f"{t} share %", pct(get(shares, t))) for t in tiers),
         *((f"{t} staleness", ratio(get(staleness, t))) for t in tiers)],
        caption="staleness: server versions made between an update's start and its aggregation",
    )


def report_renderables(run: Run, wide: bool = False) -> list[RenderableType]:
    """Everything ``fl-ee report`` prints, in order (``wide``: no column left out)."""
    parts: list[RenderableType] = [tier_table(run)] if run.summary else []
    if (policies := policy_table(run, wide)) is not None:
        parts.append(policies)
    parts.append(progress_table(run))
    blocks = [t for t in (fairness_table(run), efficiency_table(run)) if t is not None]
    parts.append(Blocks([*blocks, straggler_table(run), *[t for t in (async_table(run),) if t is not None]]))
    if (unseen := unseen_table(run)) is not None:
        parts.append(unseen)
    parts.extend(Text(f"warning: {line}", style="yellow") for line in run_warnings(run))
    return parts


def run_warnings(run: Run) -> list[str]:
    """The warnings ``summary.json`` records (a run in which no client trained, ...)."""
    found = get(run.summary, "warnings")
    return [str(w) for w in found] if isinstance(found, list) else []


# ----------------------------------------------------------------------------- compare

# label, key of key_metrics, format, whether higher is better
COMPARED: tuple[tuple[str, str, Callable[[Any], str], bool], ...] = (
    ("personalised mean %", "mean", pct, True),
    ("worst 10% %", "worst10", pct, True),
    ("std %", "std", pct, False),
    ("bottom decile %", "bottom_decile", pct, True),
    ("top decile %", "top_decile", pct, True),
    ("Jain's index", "jain", ratio, True),
    ("Gini", "gini", ratio, False),
    ("tier gap", "tier_gap", points, False),
    ("unseen clients' mean %", "unseen_mean", pct, True),
    ("generalisation gap", "generalisation_gap", points, False),
    ("virtual time s", "virtual_time_s", secs, False),
    ("time to accuracy s", "time_to_accuracy_s", secs, False),
    ("expected MFLOPs", "expected_flops", mflops, False),
    ("deployed policy accuracy %", "anytime_accuracy", pct, True),
    ("drop vs deepest exit", "anytime_drop", points, False),
    ("latency ms per sample", "latency_ms", millis, False),
    ("energy mJ per sample", "energy_mj", millis, False),
    ("ECE after scaling %", "ece_calibrated", pct, False),
)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def key_metrics(run: Run) -> dict[str, float | None]:
    """The compared figures: from the summary, else what the rounds log holds (unfinished runs)."""
    s, personalised = run.summary, run.personalised
    return {
        "mean": get(personalised, "mean"),
        "worst10": get(s, "fairness", "worst10"),
        "std": get(s, "fairness", "std"),
        "bottom_decile": get(s, "fairness", "bottom_decile"),
        "top_decile": get(s, "fairness", "top_decile"),
        "jain": get(s, "fairness", "jain"),
        "gini": get(s, "fairness", "gini"),
        "tier_gap": _first(get(s, "fairness", "tier_gap"), spread(get(personalised, "by_tier") or {})),
        "unseen_mean": get(s, "unseen", "personalised", "mean"),
        "generalisation_gap": get(s, "unseen", "gap", "mean"),
        "virtual_time_s": run.virtual_time_s,
        "time_to_accuracy_s": get(s, "time_to_accuracy_s"),
        "expected_flops": get(s, "efficiency", "expected_flops"),
        "anytime_accuracy": get(s, "deployment", "anytime", "accuracy"),
        "anytime_drop": get(s, "deployment", "anytime", "drop"),
        "latency_ms": get(s, "deployment", "anytime", "latency_ms"),
        "energy_mj": get(s, "deployment", "anytime", "energy_mj"),
        "ece_calibrated": get(s, "calibration", "ece_calibrated"),
    }


def best_of(values: Sequence[float | None], higher_is_better: bool) -> set[int]:
    """Indices of the best values (all of them on a tie), ignoring ``None``."""
    present = [v for v in values if v is not None]
    if not present:
        return set()
    best = max(present) if higher_is_better else min(present)
    return {i for i, v in enumerate(values) if v == best}


def _describe_strategy(cfg: Config) -> str:
    options = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(cfg.strategy.options.items()))
    return f"{cfg.strategy.name} {options}".strip()


def short_names(paths: Sequence[Path]) -> tuple[Path, list[str]]:
    """The runs' common parent folder, and each run's path below it."""
    resolved = [p.resolve() for p in paths]
    parent = Path(os.path.commonpath(resolved))
    return parent, [str(p.relative_to(parent)) if p != parent else p.name for p in resolved]


def compare_table(runs: Sequence[Run]) -> Sheet:
    """One column per run, a row per key metric; the best of each row in bold green."""
    parent, names = short_names([r.path for r in runs])
    table = Sheet(f"Runs compared (in {parent})", [Col("metric", "left"), *(Col(name) for name in names)],
                  caption="best per row in bold green: higher accuracy and Jain; lower std, Gini, gaps, time, FLOPs")
    table.add_row("strategy", *(_describe_strategy(r.config) for r in runs))
    table.add_row("seed", *(str(r.config.seed) for r in runs))
    table.add_row("rounds", *(f"{len(r.rounds)}/{r.config.rounds}" for r in runs))
    table.add_section()
    metrics = [key_metrics(r) for r in runs]
    for label, key, fmt, higher in COMPARED:
        values = [m[key] for m in metrics]
        best = best_of(values, higher)
        table.add_row(label, *(Text(fmt(v), style="bold green" if i in best else "") for i, v in enumerate(values)))
    return table


# -------------------------------------------------------------------------------- html


def render_text(renderables: Sequence[RenderableType], width: int = 120) -> Console:
    """A recording console that has rendered ``renderables`` (for HTML export)."""
    console = Console(record=True, file=io.StringIO(), width=width, force_terminal=True, color_system="truecolor")
    for part in renderables:
        console.print(part)
    return console


def html_page(
    run: Run, renderables: Sequence[RenderableType], images: dict[str, bytes], skipped: dict[str, str]
) -> str:
    """A self-contained HTML report: the tables as rich renders them, the plots as inline PNGs."""
    tables = render_text(renderables).export_html(
        inline_styles=True, code_format='<pre class="tables"><code>{code}</code></pre>'
    )
    figures = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(name)}.png</figcaption></figure>"
        for name, png in images.items()
    )
    notes = "".join(f"<li>{html.escape(name)}: {html.escape(why)}</li>" for name, why in skipped.items())
    title = html.escape(f"fl-ee report: {run.path}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
pre.tables {{ font-family: Menlo, 'DejaVu Sans Mono', Consolas, monospace; font-size: 13px; }}
figure {{ display: inline-block; margin: 1em; }}
img {{ max-width: 100%; }}
figcaption {{ text-align: center; color: #555; }}
</style>
</head>
<body>
<h1>{title}</h1>
{tables}
<h2>Plots</h2>
{figures}
{f"<h3>Skipped plots</h3><ul>{notes}</ul>" if notes else ""}
</body>
</html>
"""
