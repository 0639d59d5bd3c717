"""``fl-ee resume DIR`` (and ``fl-ee run --resume DIR``): continue an unfinished run from its latest checkpoint.

The run continues with the config stored in ``DIR/config.toml``. ``--set`` may change
only :data:`~fl_ee.core.resumable.RESUMABLE_KEYS` (how often to checkpoint, where the data
and the Ray cluster are, real pacing): keys that change no result, so the resumed run
ends with the same ``summary.json`` and ``clients.csv`` as an uninterrupted one. Without
a checkpoint (killed before its first), the run starts over in the same directory. A
damaged checkpoint is named before anything starts; the run continues from an earlier
whole one where there is one (a kill during a checkpoint's write leaves two).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_ee.core.config import Config, load_config
from fl_ee.core.errors import UserError, warn
from fl_ee.core.resumable import RESUMABLE_KEYS, config_difference
from fl_ee.federation.checkpoint import Checkpoints
from fl_ee.results.rundir import CONFIG, RunDir, check_unfinished_run_dir, load_run


@dataclass(frozen=True)
class Resume:
    """What a resumed run needs: its config, run directory, checkpoints, and the round it continues after."""

    cfg: Config
    run_dir: RunDir
    checkpoints: Checkpoints
    after_round: int


def prepare_resume(path: str | Path, overrides: dict[str, Any]) -> Resume:
    """Check that ``path`` holds an unfinished run that can continue, and set it up.

    Raises :class:`~fl_ee.core.errors.UserError` (one line) for a missing, foreign or finished
    run directory, a ``--set`` of a key a resume cannot change, a ``config.toml`` edited
    since the checkpoint was written, or a damaged checkpoint with none to fall back to:
    all before the data is loaded (and torch imported). A damaged checkpoint passed over
    is a warning.
    """
    path = Path(path)
    check_unfinished_run_dir(path)
    load_run(path)  # its config.toml and rounds.jsonl read back
    for key in overrides:
        if key not in RESUMABLE_KEYS:
            raise UserError(f"cannot be changed on resume (only {', '.join(RESUMABLE_KEYS)} can)", key=key)
    cfg = load_config(str(path / CONFIG), overrides)
    checkpoints = Checkpoints(path)
    latest = checkpoints.latest()
    after = latest.round if latest else 0
    for damaged, why in checkpoints.damaged:  # passed over for an earlier whole one
        warn(f"{damaged}: damaged checkpoint ({why}); resuming from the checkpoint of round {after}")
    if latest is not None and (changed := config_difference(latest.config, cfg)) is not None:
        raise UserError(f"{path / CONFIG}: {changed} differs from the config the checkpoint was written with")

    from fl_ee.federation.preflight import preflight  # imports torch

    cfg = preflight(cfg, warnings=False)  # the run's first start gave them; summary.json keeps them
    return Resume(cfg, RunDir(path, resume_after=after), checkpoints, after)
