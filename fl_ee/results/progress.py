"""The progress bar of ``fl-ee run``: an observer that advances a rich progress bar every round."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fl_ee.results.observers import Observer


class ProgressBar(Observer):
    """Rounds done of ``rounds`` (``done`` before it started), with the latest personalised accuracy.

    Use it as a context manager.
    """

    def __init__(self, rounds: int, console: Console, done: int = 0) -> None:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[status]}"))
        self.progress = Progress(*columns, console=console)
        self.task = self.progress.add_task("rounds", total=rounds, completed=done, status="starting Ray")

    def __enter__(self) -> ProgressBar:
        """Show the bar."""
        self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        """Stop drawing the bar."""
        self.progress.stop()

    def after_round(self, record: Mapping[str, Any]) -> None:
        """Advance one round; show the personalised mean where the round evaluated."""
        mean = record.get("evaluate", {}).get("personalised", {}).get("mean")
        status = f"personalised acc {100 * mean:.1f}%" if mean is not None else ""
        self.progress.update(self.task, advance=1, status=status)
