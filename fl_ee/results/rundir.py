"""The run directory, written and read here alone: ``config.toml``, ``rounds.jsonl``, ``clients.csv``, ``summary.json``.

Beside them: ``placement.jsonl`` (where each client call ran on Ray), ``client-errors.log``
and ``error.log``.

:class:`RunDir` writes a run as an observer of the round loop: whole files atomically
(temporary file, then rename), rounds appended one JSON line at a time, so an
interrupted run keeps every finished round. :func:`load_run` reads one back as a
:class:`Run`; reports and plots read values from it and compute nothing themselves.
``summary.json`` is assembled by :func:`fl_ee.results.summary.build_summary`; ``clients.csv``
rows by :func:`client_row`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomllib

from fl_ee.core.atomic import atomic_write
from fl_ee.core.config import Config, config_from_saved, config_to_toml
from fl_ee.core.errors import UserError
from fl_ee.core.metrics import straggler_summary
from fl_ee.results.observers import Observer

if TYPE_CHECKING:
    from fl_ee.results.summary import Evaluation
    from strategies import ClientInfo

CONFIG, ROUNDS, CLIENTS, SUMMARY = "config.toml", "rounds.jsonl", "clients.csv", "summary.json"
CLIENT_ERRORS, ERROR_LOG = "client-errors.log", "error.log"  # clients' tracebacks; why the run stopped
PLACEMENT = "placement.jsonl"  # per round: the Ray node each client call ran on
APART = ("client_errors", "placement")  # round record keys filed beside rounds.jsonl, not in it
CHECKPOINT_DIR = "checkpoint"  # written by fl_ee.federation.checkpoint


def json_safe(tree: Any) -> Any:
    """``tree`` with every NaN or infinity replaced by ``None``.

    A top-level dict that held one gets a ``non_finite`` list naming the dotted paths
    replaced, so a reader sees why a value is missing.
    """
    found: list[str] = []

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            found.append(path)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{path}.{i}") for i, v in enumerate(value)]
        return value

    cleaned = clean(tree, "")
    if found and isinstance(cleaned, dict):
        cleaned["non_finite"] = found
    return cleaned


def to_json(tree: Any, **kwargs: Any) -> str:
    """Strict JSON (never ``NaN`` or ``Infinity``) of :func:`json_safe` ``(tree)``."""
    return json.dumps(json_safe(tree), allow_nan=False, **kwargs)


def default_run_dir() -> Path:
    """``runs/<timestamp>`` under the working directory."""
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


# ------------------------------------------------------------------------------ schemas


def client_row(client: ClientInfo, latest: Evaluation | None, max_depth: int, unseen: bool | None = None
               ) -> dict[str, Any]:
    """One ``clients.csv`` row: identity, sizes and the client's latest evaluation (blank if none).

    A run with unseen clients (``data.unseen_fraction``) gives every row a last column ``unseen`` (1 or 0);
    ``unseen=None`` (a run without) gives none.
    """
    r = latest.reply if latest else None
    exits = r.exit_accuracy if r else ()
    fractions = r.exit_fractions if r else ()
    row: dict[str, Any] = {
        "client_id": client.client_id,
        "tier": client.tier,
        "depth": client.depth,
        "num_train": client.num_train,
        "num_test": client.num_test,
        "evaluated_round": latest.round if latest else "",
    }
    for i in range(max_depth):
        row[f"accuracy_exit{i + 1}"] = round(exits[i], 6) if i < len(exits) else ""
    row["accuracy_ensemble"] = round(r.ensemble_accuracy, 6) if r and r.ensemble_accuracy is not None else ""
    row["adaptive_accuracy"] = round(r.adaptive_accuracy, 6) if r else ""
    row["expected_flops"] = round(r.expected_flops, 1) if r else ""
    row["full_flops"] = round(r.full_flops, 1) if r else ""
    for i in range(max_depth):
        row[f"exit_fraction{i + 1}"] = round(fractions[i], 6) if i < len(fractions) else ""
    if unseen is not None:
        row["unseen"] = int(unseen)
    return row


def deepest_accuracy(row: Mapping[str, str]) -> float:
    """A ``clients.csv`` row's accuracy at the client's deepest exit."""
    return float(row[f"accuracy_exit{row['depth']}"])


# ------------------------------------------------------------------------------- writer


def check_new_run_dir(path: Path) -> None:
    """Refuse, in one line, a directory that holds a run (finished or not) or anything else.

    Cheap (no file is written), so the CLI asks before it loads any data.
    """
    if (path / SUMMARY).exists():
        raise UserError(f"{path} already holds a finished run; choose another --out")
    if (path / ROUNDS).exists():
        raise UserError(f"{path} holds an unfinished run: continue it with `fl-ee resume {path}`, "
                        "or choose another --out")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is not a directory; choose another --out")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"{path} is not empty and holds no fl-ee run; choose another --out")


def check_run_dir(path: Path) -> None:
    """Refuse, in one line, a missing directory or one that holds no fl-ee run."""
    if not path.is_dir():
        raise UserError(f"no run directory at {path}")
    for name in (CONFIG, ROUNDS):
        if not (path / name).is_file():
            raise UserError(f"{path} is not an fl-ee run directory (no {name})")


def check_unfinished_run_dir(path: Path) -> None:
    """Refuse, in one line, anything but the directory of an unfinished run."""
    check_run_dir(path)
    if (path / SUMMARY).exists():
        raise UserError(f"{path} holds a finished run; there is nothing to resume")


def make_writable(path: Path, what: str) -> None:
    """Make the folder ``path`` (and its parents) and check that it takes files; else one line naming ``what``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()  # writable? (a read-only mount fools os.access for root)
    except OSError as exc:
        raise UserError(f"cannot write {what} {path}: {exc.strerror}; choose another --out") from None


class RunDir(Observer):
    """Writes one run's files under ``path`` as the round loop reports them.

    A new run's comes from :meth:`create`; a resumed run's is ``RunDir(path, resume_after=r)``
    once :func:`check_unfinished_run_dir` accepted ``path`` (:mod:`fl_ee.federation.resume`).
    """

    def __init__(self, path: Path, *, created: Path | None = None, resume_after: int | None = None) -> None:
        self.path = path
        self.created = created  # the topmost folder create() made, if it made any
        self.resume_after = resume_after  # a resumed run: the round its checkpoint holds
        self.rounds_written = 0

    @classmethod
    def create(cls, path: str | Path) -> RunDir:
        """Make the directory for a new run (refused as :func:`check_new_run_dir` says); files come once it starts."""
        path = Path(path)
        check_new_run_dir(path)
        created = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
        make_writable(path, "run directory")
        return cls(path, created=created)

    def discard_if_unstarted(self) -> bool:
        """After a failure: remove what a new run wrote if it finished no round; whether it did.

        A directory that :meth:`create` made goes (with the parents it made, where empty);
        in a directory that existed (empty), only the run's own files go. A resumed run
        is left as it is.
        """
        if self.rounds_written or self.resume_after is not None:
            return False
        if self.created is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            for parent in self.path.parents:  # the empty parents create() made, nothing else
                if not parent.is_relative_to(self.created) or any(parent.iterdir()):
                    break
                parent.rmdir()
        else:
            for name in (CONFIG, ROUNDS):
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / CHECKPOINT_DIR, ignore_errors=True)
        return True

    @contextlib.contextmanager
    def discarded_on_early_failure(self) -> Iterator[RunDir]:
        """Within this, a new run that ends (an error, an interrupt) before finishing a round leaves nothing behind."""
        try:
            yield self
        finally:
            self.discard_if_unstarted()

    def on_start(self, cfg: Config, clients: Sequence[ClientInfo]) -> None:
        """Write ``config.toml`` (the resolved config, which loads back to the same one) and start ``rounds.jsonl``.

        A resumed run keeps the rounds up to its checkpoint's and drops the later ones
        (of ``placement.jsonl`` too).
        """
        atomic_write(self.path / CONFIG, config_to_toml(cfg))
        if self.resume_after is None:
            (self.path / ROUNDS).write_text("")
            return
        for name in (ROUNDS, PLACEMENT):
            if (self.path / name).exists():
                kept = [line for line in (self.path / name).read_text().splitlines(keepends=True)
                        if _round_of(line) <= self.resume_after]
                atomic_write(self.path / name, "".join(kept))

    def after_round(self, record: Mapping[str, Any]) -> None:
        """Append the round's line to ``rounds.jsonl``; clients' tracebacks go to ``client-errors.log``.

        Where the clients ran on Ray (``placement``: message type -> Ray node id -> client
        ids) goes to ``placement.jsonl``, a line per round, so that ``rounds.jsonl`` does
        not depend on the cluster.
        """
        errors = record.get("client_errors", {})
        with open(self.path / ROUNDS, "a") as handle:
            handle.write(to_json({k: v for k, v in record.items() if k not in APART}) + "\n")
        self.rounds_written += 1
        if placement := record.get("placement"):
            with open(self.path / PLACEMENT, "a") as handle:
                handle.write(to_json({"round": record["round"], **placement}) + "\n")
        if errors:
            with open(self.path / CLIENT_ERRORS, "a") as handle:
                for step, by_client in errors.items():
                    for client_id, reason in by_client.items():
                        handle.write(f"--- round {record['round']}, {step}, client {client_id}\n{reason.rstrip()}\n")

    def on_end(self, summary: Mapping[str, Any], client_rows: Sequence[Mapping[str, Any]]) -> None:
        """Write ``clients.csv``, then ``summary.json`` (whose presence marks a finished run)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(client_rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(client_rows)
        atomic_write(self.path / CLIENTS, buffer.getvalue())
        atomic_write(self.path / SUMMARY, to_json(summary, indent=2) + "\n")


# ------------------------------------------------------------------------------- reader


def get(tree: Any, *keys: str) -> Any:
    """``tree[k1][k2]...``, or ``None`` where any level is missing."""
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


@dataclass(frozen=True)
class Run:
    """Everything a run directory holds, parsed.

    A finished run has ``clients.csv`` and ``summary.json``; an interrupted one only
    what its rounds log holds, and the accessors fall back to that.
    """

    path: Path
    config: Config
    rounds: list[dict[str, Any]]
    clients: list[dict[str, str]]  # clients.csv rows; empty until the run finishes
    summary: dict[str, Any] | None  # None until the run finishes
    stopped: str | None = None  # why the run stopped early (the first line of error.log)

    @property
    def tiers(self) -> list[str]:
        """Tier names in config order (which also fixes each tier's colour in plots)."""
        return [t.name for t in self.config.tiers]

    def depth(self, tier: str) -> int:
        """The depth a tier holds."""
        return next(t.depth for t in self.config.tiers if t.name == tier)

    def width(self, tier: str) -> float:
        """The width ratio a tier holds."""
        return next(t.width for t in self.config.tiers if t.name == tier)

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

    @property
    def stragglers(self) -> dict[str, Any] | None:
        """The summary's ``stragglers``; for an interrupted run, the same over its logged rounds."""
        if (final := get(self.summary, "stragglers")) is not None or not self.clocks:
            return final
        return straggler_summary([c["by_tier"] for c in self.clocks], [c["round_time_s"] for c in self.clocks],
                                 [c["wasted_compute_s"] for c in self.clocks])

    @property
    def personalised(self) -> dict[str, Any] | None:
        """Personalised accuracy: the summary's, else the latest evaluation round's."""
        final = get(self.summary, "accuracy", "personalised")
        if final is None and self.evaluations:
            return get(self.evaluations[-1], "evaluate", "personalised")
        return final

    @property
    def global_by_exit(self) -> dict[str, float] | None:
        """The global model's accuracy per exit at the latest evaluation."""
        return get(self.evaluations[-1], "evaluate", "global", "by_exit") if self.evaluations else None

    @property
    def global_ensemble(self) -> float | None:
        """The global model's ensemble accuracy (mean of its exits' softmax) at the latest evaluation."""
        return get(self.evaluations[-1], "evaluate", "global", "ensemble") if self.evaluations else None

    def evaluated(self, tier: str) -> list[dict[str, str]]:
        """``clients.csv`` rows of a tier's evaluated clients."""
        return [r for r in self.clients if r["tier"] == tier and r["evaluated_round"] != ""]


def _round_of(line: str) -> float:
    """The round of a ``rounds.jsonl`` line; infinite for a half-written one."""
    try:
        return int(json.loads(line)["round"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return math.inf


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    """Round records; a half-written last line (a run killed mid-write) is dropped."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a rounds log (not UTF-8 text)") from None
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                raise UserError(f"{path}: line {number} is not JSON") from None
            continue
        if not isinstance(record, dict) or not isinstance(record.get("round"), int):
            raise UserError(f"{path}: line {number} is not a round's record (a JSON object with its round)")
        records.append(record)
    return records


def load_run(path: str | Path) -> Run:
    """Read a run directory; a missing or foreign one is a :class:`UserError`.

    Its ``config.toml`` is read even where today's validation would refuse it.
    """
    path = Path(path)
    check_run_dir(path)
    try:
        config = config_from_saved(tomllib.loads((path / CONFIG).read_text()))
    except UnicodeDecodeError:
        raise UserError(f"{path / CONFIG}: not UTF-8 text") from None
    except (tomllib.TOMLDecodeError, UserError) as exc:
        raise UserError(f"{path / CONFIG}: {exc}") from None
    clients: list[dict[str, str]] = []
    if (path / CLIENTS).is_file():
        try:
            with open(path / CLIENTS, newline="") as handle:
                clients = list(csv.DictReader(handle))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise UserError(f"{path / CLIENTS}: not a CSV file ({exc})") from None
    summary = None
    if (path / SUMMARY).is_file():
        try:
            summary = json.loads((path / SUMMARY).read_text())
        except ValueError:  # not JSON, or not text
            raise UserError(f"{path / SUMMARY} is not JSON") from None
        if not isinstance(summary, dict):
            raise UserError(f"{path / SUMMARY} is not a run's summary (a JSON object)")
    stopped = None
    if (path / ERROR_LOG).is_file():
        stopped = (path / ERROR_LOG).read_text(errors="replace").partition("\n")[0]
    return Run(path, config, _read_rounds(path / ROUNDS), clients, summary, stopped)
