"""The on-disk cache shared by every process of a run: ``$FL_EE_CACHE`` or ``~/.cache/fl-ee``.

Everything in it is read without unpickling (``numpy.load(..., allow_pickle=False)``,
JSON for metadata) and checked against sizes and an xxh3-128 checksum stored when it
was written. A damaged entry (truncated, edited, missing a file, or not written by
this code) raises :class:`CacheDamaged`; callers rebuild it from the source data.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import xxhash


class CacheDamaged(Exception):
    """A cache entry that fails validation; the message says what is wrong."""


def cache_root() -> Path:
    """Where decoded datasets and client splits are cached."""
    return Path(os.environ.get("FL_EE_CACHE", Path.home() / ".cache" / "fl-ee"))


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def unreadable(exc: BaseException) -> str:
    """Why numpy could not load a cached file, in one line (pickles are refused, never loaded)."""
    if "allow_pickle" in str(exc) or "Python objects" in str(exc):  # a pickle, or an object array
        return "holds pickled Python objects, which are never loaded"
    return one_line(exc)


def checksum(*arrays: np.ndarray) -> str:
    """xxh3-128 of the arrays' dtypes, shapes and bytes (~0.05 s per GB once the pages are cached)."""
    h = xxhash.xxh3_128()
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(array.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def load_array(path: Path, mmap: bool = True) -> np.ndarray:
    """A cached ``.npy`` array (memory-mapped copy-on-write), never unpickled.

    Raises :class:`CacheDamaged` if it is missing, truncated or not a plain array.
    """
    try:
        return np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise CacheDamaged(f"{path.name} is missing") from None
    except (OSError, ValueError, EOFError) as exc:  # truncated, object dtype, a pickle, not .npy at all
        raise CacheDamaged(f"{path.name} is unreadable ({unreadable(exc)})") from None


def discard(path: Path) -> None:
    """Move a damaged file or folder out of the way (atomic rename), then delete it."""
    trash = path.with_name(f".{path.name}.damaged-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(path, trash)
    except OSError:  # gone already (another process rebuilt it), or not ours to move
        return
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)
