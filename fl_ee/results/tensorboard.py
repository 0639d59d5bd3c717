"""TensorBoard scalars of a run, every round: an observer behind the optional extra ``fl-ee[tensorboard]``.

``fl-ee run --tensorboard DIR`` writes to DIR; ``logging.tensorboard = true`` to
``RUN_DIR/tensorboard``. Scalars (step = round): ``personalised/mean``,
``personalised/tier/<tier>``, ``global/exit<i>`` at each evaluation; ``time/round_s`` and
``time/virtual_s`` (the virtual clock), ``stragglers/late`` and ``stragglers/dropped``
(late, failed and rejected updates) every round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fl_ee.core.config import Config
from fl_ee.core.errors import UserError
from fl_ee.results.observers import Observer
from fl_ee.results.rundir import get
from sims.clock import FAILED, LATE, REJECTED

SUBDIR = "tensorboard"  # under the run directory, for logging.tensorboard


class TensorBoardWriter(Observer):
    """Writes each round's scalars to an event file in ``log_dir`` (flushed every round)."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("TensorBoard is not installed; pip install 'fl-ee[tensorboard]'",
                            key="logging.tensorboard") from None
        self.writer = SummaryWriter(str(log_dir))

    def after_round(self, record: Mapping[str, Any]) -> None:
        """The round's scalars."""
        step = int(record["round"])
        scalars: dict[str, Any] = {}
        if (personalised := get(record, "evaluate", "personalised")) is not None:
            scalars["personalised/mean"] = personalised.get("mean")
            scalars |= {f"personalised/tier/{t}": v for t, v in (personalised.get("by_tier") or {}).items()}
            by_exit = get(record, "evaluate", "global", "by_exit") or {}
            scalars |= {f"global/exit{i}": v for i, v in by_exit.items()}
            scalars |= {f"{side}/ensemble": v for side, v in (("personalised", personalised.get("ensemble")),
                        ("global", get(record, "evaluate", "global", "ensemble"))) if v is not None}
        if (clock := record.get("clock")) is not None:
            counts = clock["by_tier"].values()
            scalars |= {"time/round_s": clock["round_time_s"], "time/virtual_s": clock["virtual_time_s"],
                        "stragglers/late": sum(c.get(LATE, 0) for c in counts),
                        "stragglers/dropped": sum(c.get(k, 0) for c in counts for k in (LATE, FAILED, REJECTED))}
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def on_end(self, summary: Mapping[str, Any], client_rows: Sequence[Mapping[str, Any]]) -> None:
        """Close the event file."""
        self.writer.close()


def tensorboard_observers(cfg: Config, run_dir: Path, directory: str | None = None) -> list[Observer]:
    """The TensorBoard observers of a run: none, or one writing to ``directory`` (``--tensorboard``).

    Without ``directory``, ``logging.tensorboard`` writes under ``run_dir``.
    """
    if directory:
        return [TensorBoardWriter(Path(directory))]
    return [TensorBoardWriter(run_dir / SUBDIR)] if cfg.logging.tensorboard else []
