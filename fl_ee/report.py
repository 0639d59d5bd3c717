"""Tables from a run directory alone (``clients.csv``, ``summary.json``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from fl_ee.metrics import mean_or_none
from fl_ee.rundir import CLIENTS, SUMMARY


def read_clients(run_dir: Path) -> list[dict[str, str]]:
    """The rows of ``clients.csv``."""
    with open(run_dir / CLIENTS, newline="") as handle:
        return list(csv.DictReader(handle))


def read_summary(run_dir: Path) -> dict[str, Any]:
    """``summary.json`` as a dict."""
    return json.loads((run_dir / SUMMARY).read_text())


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _column_mean(rows: list[dict[str, str]], column: str) -> float | None:
    return mean_or_none([float(r[column]) for r in rows if r.get(column, "") != ""])


def accuracy_table(run_dir: Path) -> Table:
    """Personalised accuracy (%) per tier and per exit, the global model per exit, and cost."""
    rows, summary = read_clients(run_dir), read_summary(run_dir)
    exits = sorted(int(c.removeprefix("accuracy_exit")) for c in rows[0] if c.startswith("accuracy_exit"))
    table = Table(title=f"Personalised accuracy (%) after {summary['rounds']} rounds", box=box.SIMPLE_HEAD)
    for name in ("tier", "depth", "clients", *(f"exit{i}" for i in exits), "adaptive", "MFLOPs"):
        table.add_column(name, justify="left" if name == "tier" else "right")
    for tier in summary["accuracy"]["personalised"]["by_tier"]:
        members = [r for r in rows if r["tier"] == tier]
        flops = _column_mean(members, "expected_flops")
        table.add_row(
            tier,
            members[0]["depth"] if members else "-",
            str(len(members)),
            *(_pct(_column_mean(members, f"accuracy_exit{i}")) for i in exits),
            _pct(_column_mean(members, "adaptive_accuracy")),
            "-" if flops is None else f"{flops / 1e6:.2f}",
        )
    by_exit = summary["accuracy"]["global"]["by_exit"]
    table.add_section()
    table.add_row("global", "", "", *(_pct(by_exit.get(str(i))) for i in exits), "", "")
    mean = summary["accuracy"]["personalised"]["mean"]
    table.caption = f"personalised mean at each client's deepest exit: {_pct(mean)}%"
    return table
