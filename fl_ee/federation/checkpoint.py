"""Checkpoints: the round loop's whole state in the run directory, and a resumed run's start from it.

:class:`Checkpoints` is an observer of the round loop. Every ``checkpoint_every`` rounds
(and after the last) it writes ``RUN_DIR/checkpoint/round-<r>/``:

* ``arrays.npz``: the global model;
* ``strategy.npz`` and ``state.json["strategy"]``: the strategy's
  :meth:`~strategies.DepthAwareStrategy.state_dict` (its arrays and its JSON values);
* ``async.npz`` and ``state.json["async"]``: an async run's server
  (:meth:`~fl_ee.federation.asynchronous.AsyncServer.state_dict`: the clients in flight and
  the replies they sent, the versions they started from);
* ``state.json["selection"]``: its client selection's
  :meth:`~strategies.base.Selection.state_dict` (Oort's utilities);
* ``state.json``: the round, the config it was written under, and the loop's
  :class:`~fl_ee.results.observers.LoopState` (every client's latest evaluation, the global evaluation, each
  round's clock record, the (virtual time, accuracy) of every evaluation, and the
  virtual clock).

The folder is written as ``.round-<r>.tmp`` and renamed, so a checkpoint is whole or
absent; older ones are removed after the rename. Every client's state (what its client
algorithm keeps, such as personal exits, and FedDyn's ``g_prev``) is its own: clients save
it under ``RUN_DIR/checkpoint/clients/`` each round they train
(:mod:`fl_ee.federation.clientstate`), and a checkpoint of round ``r`` stands for each client's
newest file of a round ``<= r``.

Randomness needs no saving: every draw is seeded from the run seed, its stream, round
and client (:mod:`fl_ee.core.seeding`), and torch's global generator is used only for the
initial model, which a resumed run rebuilds from the seed. Arrays are NumPy ``.npz``
read with ``allow_pickle=False``, everything else JSON; nothing is pickled.

Flower and torch are imported only where a checkpoint is written or loaded, so that
``fl-ee sweep``, ``compare`` and ``resume`` check their arguments without them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fl_ee.core.atomic import atomic_write, read_npz, write_npz
from fl_ee.core.cache import one_line
from fl_ee.core.config import Config
from fl_ee.core.errors import UserError
from fl_ee.core.resumable import config_difference, resumable_config
from fl_ee.federation import clientstate
from fl_ee.results.observers import LoopState, Observer
from fl_ee.results.rundir import CHECKPOINT_DIR

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

    from sims.emulator import DeviceEmulator
    from strategies import ClientInfo, DepthAwareStrategy

FORMAT = 1
CLIENTS = "clients"
STATE, ARRAYS, STRATEGY, ASYNC = "state.json", "arrays.npz", "strategy.npz", "async.npz"
PREFIX = "round-"

# ------------------------------------------------------------------ (de)serialisation


def loop_state_to_json(state: LoopState) -> dict[str, Any]:
    """The JSON part of a loop state (everything but the arrays)."""
    return {
        "round": state.round,
        "results": {str(cid): {"round": e.round, "reply": dataclasses.asdict(e.reply)}
                    for cid, e in sorted(state.results.items())},
        "global": state.global_eval,
        "clocks": state.clocks,
        "accuracy_at": [list(pair) for pair in state.accuracy_at],
        "virtual_time_s": state.virtual_time_s,
        "bad_rounds": state.bad_rounds,
    }


def loop_state_from_json(raw: Mapping[str, Any], arrays: ArrayRecord) -> LoopState:
    """The loop state of :func:`loop_state_to_json` and the global arrays."""
    from fl_ee.results.summary import Evaluation
    from fl_ee.wire.protocol import EvaluateReply

    def reply(values: Mapping[str, Any]) -> EvaluateReply:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return EvaluateReply(**fields)

    return LoopState(
        arrays=arrays,
        round=int(raw["round"]),
        results={int(cid): Evaluation(int(e["round"]), reply(e["reply"])) for cid, e in raw["results"].items()},
        global_eval=dict(raw["global"]) if "global" in raw else {"by_exit": dict(raw["global_by_exit"])},
        clocks=list(raw["clocks"]),
        accuracy_at=[(t, mean) for t, mean in raw["accuracy_at"]],
        bad_rounds=int(raw.get("bad_rounds", 0)),
    )


def split_strategy_state(state: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A strategy's ``state_dict()`` as (its NumPy arrays, its JSON values); anything else is an error."""
    arrays, values = {}, {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise TypeError(f"strategy state {name!r}: object arrays cannot be saved without pickle")
            arrays[name] = value
        else:
            json.dumps(value)  # a TypeError names what cannot be saved
            values[name] = value
    return arrays, values


# ------------------------------------------------------------------------ the observer


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint, read back: its round, the config it was written under, and its folder."""

    round: int
    config: dict[str, Any]
    path: Path

    def load(self, strategy: DepthAwareStrategy) -> LoopState:
        """The saved loop state; the saved strategy state goes into ``strategy``."""
        from strategies.base import to_record

        raw = json.loads((self.path / STATE).read_text())
        state = loop_state_from_json(raw["loop"], to_record(read_npz(self.path / ARRAYS)))
        if "async" in raw:
            state.async_state = {**read_npz(self.path / ASYNC), **raw["async"]}
        strategy.load_state_dict({**read_npz(self.path / STRATEGY), **raw["strategy"]})
        strategy.selection.load_state_dict(raw.get("selection", {}))  # none in checkpoints written before it
        return state


class _Damaged(Exception):
    """A checkpoint file that does not read back: ``args`` are (its path, what is wrong)."""


def _read_whole(folder: Path) -> Checkpoint:
    """The checkpoint in ``folder``, once its ``state.json`` and both ``.npz`` archives read back in full.

    Raises :class:`_Damaged` naming the first file that does not, and :class:`UserError`
    for a checkpoint of another format.
    """
    try:
        raw = json.loads((folder / STATE).read_text())
        if isinstance(raw, dict) and raw.get("format") != FORMAT:
            raise UserError(f"{folder}: checkpoint format {raw.get('format')!r}, this fl-ee reads {FORMAT}")
        checkpoint = Checkpoint(int(raw["round"]), dict(raw["config"]), folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # missing, not UTF-8 or JSON, not what was written
        raise _Damaged(folder / STATE, one_line(exc)) from None
    for name in (ARRAYS, STRATEGY, *[ASYNC] * ("async" in raw)):
        try:
            read_npz(folder / name)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # missing, truncated, changed
            raise _Damaged(folder / name, one_line(exc)) from None
    return checkpoint


class Checkpoints(Observer):
    """The checkpoints of the run in ``run_path``; as an observer, it writes them.

    ``write_s`` collects the seconds each checkpoint took to write.
    """

    def __init__(self, run_path: str | Path) -> None:
        self.path = Path(run_path) / CHECKPOINT_DIR
        self.every = 1
        self.rounds = 0
        self.config: dict[str, Any] = {}
        self.write_s: list[float] = []
        self.damaged: list[tuple[Path, str]] = []  # what latest() passed over: (file, what is wrong)

    @property
    def client_dir(self) -> Path:
        """Where clients save their state (:mod:`fl_ee.federation.clientstate`)."""
        return self.path / CLIENTS

    # ------------------------------------------------------------------ reading
    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that reads back whole, or ``None`` where there is none.

        Its ``state.json``, ``arrays.npz`` and ``strategy.npz`` are read in full. A newer one
        that does not read (a file truncated or changed since it was written) is passed
        over and listed in :attr:`damaged` as (file, what is wrong); where no checkpoint
        reads, a :class:`UserError` names the damaged file and says how to start over.
        """
        self.damaged = []
        found = [p for p in self.path.glob(f"{PREFIX}*") if p.is_dir() and p.name.removeprefix(PREFIX).isdigit()]
        for folder in sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)), reverse=True):
            try:
                return _read_whole(folder)
            except _Damaged as exc:
                self.damaged.append(exc.args)
        if self.damaged:
            path, why = self.damaged[0]
            raise UserError(f"{path}: damaged checkpoint ({why}), and no earlier one to fall back to; remove "
                            f"{path.parent} and `fl-ee resume {self.path.parent}` starts the run over")
        return None

    def restore(
        self, cfg: Config, fresh: LoopState, strategy: DepthAwareStrategy, emulator: DeviceEmulator
    ) -> LoopState:
        """The loop state to start from: the latest checkpoint's, else ``fresh``.

        The checkpoint's strategy state goes into ``strategy``, its virtual clock into ``emulator``.
        Client files of rounds after it (work of a killed run past its last checkpoint) are removed.
        """
        latest = self.latest()
        clientstate.drop_after(self.client_dir, latest.round if latest else 0)
        if latest is None:
            return fresh
        if (key := config_difference(latest.config, cfg)) is not None:
            raise UserError(f"{key}: differs from the config the checkpoint was written with")
        state = latest.load(strategy)
        emulator.virtual_time_s = state.virtual_time_s
        return state

    # ------------------------------------------------------------------ writing
    def on_start(self, cfg: Config, clients: Sequence[ClientInfo]) -> None:
        """Note how often to checkpoint and the config to save with each checkpoint."""
        self.every, self.rounds, self.config = cfg.checkpoint_every, cfg.rounds, resumable_config(cfg)
        self.client_dir.mkdir(parents=True, exist_ok=True)

    def after_state(self, state: LoopState, strategy: DepthAwareStrategy) -> None:
        """Write a checkpoint every ``checkpoint_every`` rounds and after the last."""
        if state.round % self.every == 0 or state.round == self.rounds:
            self.save(state, strategy)

    def save(self, state: LoopState, strategy: DepthAwareStrategy) -> Path:
        """Write the checkpoint of ``state.round``, then drop older checkpoints and client files."""
        from strategies.base import to_numpy

        started = time.perf_counter()
        name = f"{PREFIX}{state.round:06d}"
        tmp, final = self.path / f".{name}.tmp", self.path / name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        strategy_arrays, strategy_values = split_strategy_state(strategy.state_dict())
        write_npz(tmp / ARRAYS, to_numpy(state.arrays))
        write_npz(tmp / STRATEGY, strategy_arrays)
        async_arrays, async_values = split_strategy_state(state.async_state)
        if state.async_state:
            write_npz(tmp / ASYNC, async_arrays)
        atomic_write(tmp / STATE, json.dumps({
            "format": FORMAT,
            "round": state.round,
            "config": self.config,
            "seeds": "stateless: every draw is derived from seed, stream, round and client (fl_ee/core/seeding.py)",
            "strategy": strategy_values,
            "selection": strategy.selection.state_dict(),
            "loop": loop_state_to_json(state),
            **({"async": async_values} if state.async_state else {}),
        }))
        shutil.rmtree(final, ignore_errors=True)  # a damaged checkpoint a resume passed over
        os.replace(tmp, final)
        _fsync_dir(self.path)
        for old in self.path.glob(f"{PREFIX}*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        if [p.name for p in self.path.glob(f"{PREFIX}*")] == [name]:  # an older one left still needs its files
            clientstate.prune(self.client_dir, state.round)
        self.write_s.append(time.perf_counter() - started)
        return final


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

