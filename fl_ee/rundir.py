"""The run directory: ``config.toml``, ``rounds.jsonl``, ``clients.csv``, ``summary.json``.

Whole files are written atomically (temporary file, then rename); rounds are appended
one JSON line at a time, so an interrupted run keeps every finished round.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fl_ee.errors import UserError

CONFIG, ROUNDS, CLIENTS, SUMMARY = "config.toml", "rounds.jsonl", "clients.csv", "summary.json"


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_run_dir() -> Path:
    """``runs/<timestamp>`` under the working directory."""
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


class RunDir:
    """Writes one run's files under ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, path: str | Path) -> RunDir:
        """Make the directory; refuse one that already holds a finished run."""
        path = Path(path)
        if (path / SUMMARY).exists():
            raise UserError(f"{path} already holds a finished run; choose another --out")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create run directory {path}: {exc.strerror}") from None
        (path / ROUNDS).write_text("")
        return cls(path)

    def write_config(self, toml_text: str) -> None:
        atomic_write(self.path / CONFIG, toml_text)

    def append_round(self, record: dict[str, Any]) -> None:
        with open(self.path / ROUNDS, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def write_clients(self, rows: Sequence[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path / CLIENTS, buffer.getvalue())

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.path / SUMMARY, json.dumps(summary, indent=2) + "\n")
