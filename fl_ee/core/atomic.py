"""Files replaced atomically, and ``.npz`` archives read without pickle.

A file is written to a temporary file in its folder and renamed over the old one, so a
reader (or a run killed mid-write) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported by the functions that use it: fl-ee check's record writes text only
    import numpy as np


@contextlib.contextmanager
def _replacing(path: Path, mode: str, fsync: bool) -> Iterator[IO[Any]]:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, newline=None if "b" in mode else "") as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``."""
    with _replacing(path, "w", fsync=True) as handle:
        handle.write(text)


def write_npz(path: Path, arrays: Mapping[str, np.ndarray], fsync: bool = True) -> None:
    """Replace ``path`` with an uncompressed ``.npz`` of ``arrays`` (``fsync=False`` for caches)."""
    import numpy as np

    with _replacing(path, "wb", fsync) as handle:
        np.savez(handle, **dict(arrays))  # type: ignore[arg-type]  # numpy's stub: 2nd arg is allow_pickle


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, in the order written; never unpickles anything."""
    import numpy as np

    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
