"""A client's own state on disk, after every round it trained, so a resumed run finds it.

The state is whatever its client algorithm keeps (:meth:`fl_ee.learning.algorithm.ClientAlgorithm.kept`:
personal exits as ``exits/<key>``, a user's arrays under its namespace) and, under
``strategy.name = "feddyn"``, FedDyn's ``g_prev`` as ``feddyn/<key>``: named arrays. In
simulation every client writes under the folder its instructions name
(:attr:`fl_ee.wire.protocol.Instructions.state_dir`, ``RUN_DIR/checkpoint/clients``), one
file per client and round::

    <state_dir>/<client id>/round-<r>.npz     # the client's state after training in round r

A client keeps its state in Flower's ``Context.state`` while its process lives; a fresh
process (a resumed run) reads the newest file of a round it may see: before round ``r``
for training in round ``r``, up to ``r`` for evaluating in it. Files of later rounds (a
killed run's work past its last checkpoint) are never read, and the checkpoint removes
them on resume (:func:`drop_after`) and prunes the ones no checkpoint needs any more
(:func:`prune`). Files are NumPy ``.npz`` archives written atomically and read with
``allow_pickle=False``; nothing is pickled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fl_ee.core.atomic import read_npz, write_npz

_ROUND_FILE = re.compile(r"round-(\d+)\.npz")


def _client_dir(state_dir: str | Path, client_id: int) -> Path:
    return Path(state_dir) / f"{client_id:05d}"


def _rounds(folder: Path) -> dict[int, Path]:
    """The round files of one client's folder by round."""
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in folder.iterdir() if (m := _ROUND_FILE.fullmatch(p.name))}


def save_state(state_dir: str | Path, client_id: int, server_round: int, state: Mapping[str, np.ndarray]) -> None:
    """Save a client's state after it trained in ``server_round``."""
    folder = _client_dir(state_dir, client_id)
    folder.mkdir(parents=True, exist_ok=True)
    write_npz(folder / f"round-{server_round:06d}.npz", state)


def load_state(state_dir: str | Path, client_id: int, through: int) -> dict[str, np.ndarray] | None:
    """The client's newest saved state of a round ``<= through``; ``None`` if it has none."""
    rounds = [r for r in _rounds(_client_dir(state_dir, client_id)) if r <= through]
    if not rounds:
        return None
    return read_npz(_client_dir(state_dir, client_id) / f"round-{max(rounds):06d}.npz")


def _client_folders(state_dir: str | Path) -> list[Path]:
    root = Path(state_dir)
    return [p for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []


def prune(state_dir: str | Path, through: int) -> None:
    """Per client, remove the files older than its newest one of a round ``<= through`` (a checkpoint's round)."""
    for folder in _client_folders(state_dir):
        rounds = _rounds(folder)
        kept = max((r for r in rounds if r <= through), default=None)
        for r, path in rounds.items():
            if kept is not None and r < kept:
                path.unlink(missing_ok=True)


def drop_after(state_dir: str | Path, server_round: int) -> None:
    """Remove every file of a round after ``server_round``, and half-written ones (a resume from that round)."""
    for folder in _client_folders(state_dir):
        for r, path in _rounds(folder).items():
            if r > server_round:
                path.unlink()
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
