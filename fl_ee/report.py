"""Tables from a run directory alone, for ``fl-ee run``, ``fl-ee report`` and ``fl-ee compare``.

A run directory holds ``config.toml`` and ``rounds.jsonl`` from the start, and
``clients.csv`` and ``summary.json`` once the run finished; an interrupted run is
reported from what its rounds log holds. The virtual clock (``clock`` in each round,
``stragglers``/``virtual_time_s``/``time_to_accuracy_s`` in the summary) comes from
device emulation and is shown only where present.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.columns import Columns
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from fl_ee.config import Config, config_from_saved, read_toml
from fl_ee.errors import UserError
from fl_ee.metrics import efficiency, mean_or_none, spread
from fl_ee.rundir import CLIENTS, CONFIG, ROUNDS, SUMMARY

RECENT_EVALUATIONS = 10  # rows of the accuracy-over-rounds table


@dataclass(frozen=True)
class Run:
    """Everything a run directory holds, parsed."""

    path: Path
    config: Config
    rounds: list[dict[str, Any]]
    clients: list[dict[str, str]]  # clients.csv rows; empty until the run finishes
    summary: dict[str, Any] | None  # None until the run finishes

    @property
    def tiers(self) -> list[str]:
        """Tier names in config order (which also fixes each tier's colour in plots)."""
        return [t.name for t in self.config.tiers]

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """The round records that carry an evaluation."""
        return [r for r in self.rounds if "evaluate" in r]

    @property
    def clocks(self) -> list[dict[str, Any]]:
        """Each round's virtual clock, where device emulation recorded one."""
        return [r["clock"] for r in self.rounds if "clock" in r]

    @property
    def has_clock(self) -> bool:
        """Whether device emulation recorded a virtual clock."""
        return bool(self.clocks)

    @property
    def virtual_time_s(self) -> float | None:
        """Virtual time at the end: the summary's, else the last logged round's."""
        final = get(self.summary, "virtual_time_s")
        return final if final is not None or not self.clocks else self.clocks[-1]["virtual_time_s"]

    def evaluated(self, tier: str) -> list[dict[str, str]]:
        """``clients.csv`` rows of a tier's evaluated clients."""
        return [r for r in self.clients if r["tier"] == tier and r["evaluated_round"] != ""]


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    """Round records; a half-written last line (a run killed mid-write) is dropped."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise UserError(f"{path}: line {number} is not JSON") from None
    return records


def load_run(path: str | Path) -> Run:
    """Read a run directory; a missing or foreign one is a :class:`UserError`."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"no run directory at {path}")
    for name in (CONFIG, ROUNDS):
        if not (path / name).is_file():
            raise UserError(f"{path} is not an fl-ee run directory (no {name})")
    try:
        config = config_from_saved(read_toml(path / CONFIG))
    except UserError as exc:
        raise UserError(f"{path / CONFIG}: {exc}") from None
    clients: list[dict[str, str]] = []
    if (path / CLIENTS).is_file():
        with open(path / CLIENTS, newline="") as handle:
            clients = list(csv.DictReader(handle))
    summary = None
    if (path / SUMMARY).is_file():
        try:
            summary = json.loads((path / SUMMARY).read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path / SUMMARY} is not JSON") from None
    return Run(path, config, _read_rounds(path / ROUNDS), clients, summary)


# ------------------------------------------------------------------ values and formats


def get(tree: dict[str, Any] | None, *keys: str) -> Any:
    """``tree[k1][k2]...``, or ``None`` where any level is missing."""
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def mflops(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.3f}"


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} pp"


def count(value: int | None) -> str:
    return "-" if value is None else str(value)


def column(rows: Sequence[dict[str, str]], name: str) -> list[float]:
    """The non-empty values of a ``clients.csv`` column, as floats."""
    return [float(r[name]) for r in rows if r.get(name, "") != ""]


def deepest_accuracy(row: dict[str, str]) -> float:
    """A client's accuracy at its deepest exit."""
    return float(row[f"accuracy_exit{row['depth']}"])


def exit_fractions(row: dict[str, str]) -> list[float]:
    """A client's share of test samples leaving at each exit it holds."""
    return [float(row[f"exit_fraction{i}"]) for i in range(1, int(row["depth"]) + 1)]


def row_efficiency(rows: Sequence[dict[str, str]], num_exits: int) -> dict[str, Any] | None:
    """The ``efficiency`` figures of evaluated ``clients.csv`` rows (``None`` for runs without them)."""
    if not rows or "full_flops" not in rows[0]:
        return None
    return efficiency(
        [exit_fractions(r) for r in rows],
        column(rows, "expected_flops"),
        column(rows, "full_flops"),
        column(rows, "num_test"),
        num_exits,
    )


# ------------------------------------------------------------------------------ tables


def tier_table(run: Run) -> Table:
    """Per tier (from ``clients.csv``): clients, depth, participation, accuracy per exit,
    adaptive accuracy, FLOPs per sample under the exit policy and its saving."""
    cfg = run.config
    exits = range(1, cfg.max_depth + 1)
    participation = get(run.summary, "stragglers", "participation_by_tier")
    table = Table(title=f"Personalised accuracy (%) per tier after {len(run.rounds)} rounds", box=box.SIMPLE_HEAD)
    headers = ["tier", "depth", "clients", *(["particip. %"] if participation else []),
               *(f"exit{i}" for i in exits), "adaptive", "MFLOPs", "saving %"]
    for name in headers:
        table.add_column(name, justify="left" if name == "tier" else "right")

    def cells(rows: list[dict[str, str]]) -> list[str]:
        eff = row_efficiency(rows, cfg.max_depth)
        return [*(pct(mean_or_none(column(rows, f"accuracy_exit{i}"))) for i in exits),
                pct(mean_or_none(column(rows, "adaptive_accuracy"))),
                mflops(get(eff, "expected_flops")), pct(get(eff, "flops_saving"))]

    for tier in cfg.tiers:
        share = [pct(get(participation, tier.name))] if participation else []
        members = sum(r["tier"] == tier.name for r in run.clients)
        table.add_row(tier.name, str(tier.depth), str(members), *share, *cells(run.evaluated(tier.name)))
    table.add_section()
    everyone = [r for t in run.tiers for r in run.evaluated(t)]
    table.add_row("all", "", str(len(run.clients)), *([""] if participation else []), *cells(everyone))
    global_by_exit = get(run.evaluations[-1], "evaluate", "global", "by_exit") if run.evaluations else None
    table.add_row("global", "", "", *([""] if participation else []),
                  *(pct(get(global_by_exit, str(i))) for i in exits), "", "", "")
    mean = mean_or_none([deepest_accuracy(r) for r in everyone])
    table.caption = f"personalised mean at each client's deepest exit: {pct(mean)}%"
    return table


def progress_table(run: Run) -> Table:
    """Personalised accuracy at each client's deepest exit, per tier, at the latest evaluations."""
    cfg, evaluations = run.config, run.evaluations
    shown = evaluations[-RECENT_EVALUATIONS:]
    table = Table(title="Personalised accuracy (%) over rounds", box=box.SIMPLE_HEAD)
    headers = ["round", *(["virtual s"] if run.has_clock else []), "mean", *run.tiers, f"global exit{cfg.max_depth}"]
    for name in headers:
        table.add_column(name, justify="right")
    for record in shown:
        personalised = record["evaluate"]["personalised"]
        table.add_row(
            str(record["round"]),
            *([secs(get(record, "clock", "virtual_time_s"))] if run.has_clock else []),
            pct(personalised["mean"]),
            *(pct(get(personalised, "by_tier", t)) for t in run.tiers),
            pct(get(record, "evaluate", "global", "by_exit", str(cfg.max_depth))),
        )
    notes = []
    if len(shown) < len(evaluations):
        notes.append(f"last {len(shown)} of {len(evaluations)} evaluations")
    if run.summary is None:
        notes.append(f"unfinished run: {len(run.rounds)} of {cfg.rounds} rounds logged")
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


def fairness_table(run: Run) -> Table | None:
    """The summary's ``fairness`` section (``None`` before the run finishes)."""
    f = get(run.summary, "fairness")
    if f is None:
        return None
    return _key_values(
        "Fairness",
        [("mean %", pct(f["mean"])), ("std %", pct(f["std"])), ("min %", pct(f["min"])),
         ("worst 10% %", pct(f["worst10"])), ("best 10% %", pct(f["best10"])), ("Jain's index", ratio(f["jain"])),
         ("Gini", ratio(f["gini"])), ("tier gap", points(f["tier_gap"]))],
        caption="of personalised accuracy at each client's deepest exit",
    )


def efficiency_table(run: Run) -> Table | None:
    """The summary's ``efficiency`` section (``None`` before the run finishes)."""
    e = get(run.summary, "efficiency")
    if e is None:
        return None
    policy = run.config.exit_policy
    return _key_values(
        "Efficiency",
        [*((f"exit {i} share %", pct(v)) for i, v in e["exit_distribution"].items()),
         ("expected MFLOPs", mflops(e["expected_flops"])), ("saving vs full %", pct(e["flops_saving"]))],
        caption=f"per test sample; {policy.name} exit policy, threshold {policy.threshold}",
    )


def straggler_table(run: Run) -> Table:
    """Virtual time and stragglers from device emulation; ``-`` where the run has none."""
    s = run.summary
    caption = None if run.has_clock or get(s, "stragglers") else "no virtual clock in this run"
    return _key_values(
        "Stragglers",
        [("virtual time s", secs(run.virtual_time_s)), ("time to accuracy s", secs(get(s, "time_to_accuracy_s"))),
         ("round time p50 s", secs(get(s, "stragglers", "round_time_s", "p50"))),
         ("round time p90 s", secs(get(s, "stragglers", "round_time_s", "p90"))),
         ("round time max s", secs(get(s, "stragglers", "round_time_s", "max"))),
         ("late %", pct(get(s, "stragglers", "late_fraction"))),
         ("dropped updates", count(get(s, "stragglers", "dropped_updates")))],
        caption=caption,
    )


def report_renderables(run: Run) -> list[RenderableType]:
    """Everything ``fl-ee report`` prints, in order."""
    parts: list[RenderableType] = [tier_table(run)] if run.clients else []
    parts.append(progress_table(run))
    blocks = [t for t in (fairness_table(run), efficiency_table(run)) if t is not None]
    parts.append(Columns([*blocks, straggler_table(run)], padding=(0, 4)))
    return parts


# ----------------------------------------------------------------------------- compare

# label, key of key_metrics, format, whether higher is better
COMPARED: tuple[tuple[str, str, Callable[[Any], str], bool], ...] = (
    ("personalised mean %", "mean", pct, True),
    ("worst 10% %", "worst10", pct, True),
    ("Jain's index", "jain", ratio, True),
    ("Gini", "gini", ratio, False),
    ("tier gap", "tier_gap", points, False),
    ("virtual time s", "virtual_time_s", secs, False),
    ("time to accuracy s", "time_to_accuracy_s", secs, False),
    ("expected MFLOPs", "expected_flops", mflops, False),
)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def key_metrics(run: Run) -> dict[str, float | None]:
    """The compared figures: from the summary, else what the rounds log holds (unfinished runs)."""
    s = run.summary
    last = get(run.evaluations[-1], "evaluate", "personalised") if run.evaluations else None
    return {
        "mean": _first(get(s, "fairness", "mean"), get(last, "mean")),
        "worst10": get(s, "fairness", "worst10"),
        "jain": get(s, "fairness", "jain"),
        "gini": get(s, "fairness", "gini"),
        "tier_gap": _first(get(s, "fairness", "tier_gap"), spread(get(last, "by_tier") or {})),
        "virtual_time_s": run.virtual_time_s,
        "time_to_accuracy_s": get(s, "time_to_accuracy_s"),
        "expected_flops": get(s, "efficiency", "expected_flops"),
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


def compare_table(runs: Sequence[Run]) -> Table:
    """One column per run, a row per key metric; the best of each row in bold green."""
    parent, names = short_names([r.path for r in runs])
    table = Table(title=f"Runs compared (in {parent})", box=box.SIMPLE_HEAD,
                  caption="best per row in bold green: higher accuracy and Jain; lower Gini, gap, time, FLOPs")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right", overflow="fold")
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
