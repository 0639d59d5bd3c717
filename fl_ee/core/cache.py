"""The on-disk cache shared by every process of a run: ``$FL_EE_CACHE`` or ``~/.cache/fl-ee``.

Everything in it is read without unpickling (``numpy.load(..., allow_pickle=False)``,
JSON for metadata) and checked against sizes and an xxh3-128 checksum stored when it
was written. A damaged entry (truncated, edited, missing a file, or not written by
this code) raises :class:`CacheDamaged`; callers rebuild it from the source data.
Small results (a network's FLOPs, ``fl-ee check``'s plan) are JSON entries under
``$FL_EE_CACHE/<kind>/``, keyed by everything they depend on (:func:`cached`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fl_ee.core.atomic import atomic_write
from fl_ee.core.errors import warn

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")


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
    import numpy as np  # here, not with the module: the JSON entries (fl-ee check's record) need none
    import xxhash

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
    import numpy as np

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


def entry_path(kind: str, key: Any) -> Path:
    """Where the JSON entry of ``kind`` for ``key`` (any JSON value) is cached."""
    return cache_root() / kind / f"{hashlib.sha1(_canonical(key).encode()).hexdigest()[:20]}.json"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _entry_checksum(key: str, body: Any) -> str:
    return hashlib.sha1(f"{key}\n{_canonical(body)}".encode()).hexdigest()


def read_entry(path: Path, key: Any) -> Any:
    """The body of the JSON entry :func:`write_entry` wrote at ``path`` for ``key``.

    Raises :class:`CacheDamaged` if it is unreadable, holds another key, or does not
    match its checksum.
    """
    try:
        entry = json.loads(path.read_text())
    except FileNotFoundError:
        raise CacheDamaged("is missing") from None
    except (OSError, ValueError) as exc:
        raise CacheDamaged(f"is unreadable ({one_line(exc)})") from None
    if not isinstance(entry, dict) or entry.get("key") != _canonical(key):
        raise CacheDamaged("holds another entry (edited or damaged)")
    if entry.get("checksum") != _entry_checksum(entry["key"], entry.get("body")):
        raise CacheDamaged("does not match its checksum (edited or damaged)")
    return entry["body"]


def write_entry(path: Path, key: Any, body: Any) -> None:
    """Replace ``path`` with ``body`` under ``key`` and a checksum, atomically; an unwritable cache is skipped."""
    canonical = _canonical(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"key": canonical, "body": body, "checksum": _entry_checksum(canonical, body)}))
    except OSError:  # an unwritable cache only costs the next process a recomputation
        pass


def cached(kind: str, key: Any, compute: Callable[[], T], dump: Callable[[T], Any], parse: Callable[[Any], T]) -> T:
    """``compute()``, or what an earlier call with the same ``kind`` and ``key`` cached on disk.

    ``dump`` turns the value into JSON, ``parse`` back (raising ``KeyError``, ``TypeError``
    or ``ValueError`` on a body it cannot read). A damaged entry is named in one warning
    line, computed again and replaced; what ``compute`` raises is raised and nothing cached.
    """
    path = entry_path(kind, key)
    if path.exists():
        try:
            return parse(read_entry(path, key))
        except (KeyError, TypeError, ValueError) as exc:
            warn(f"{path}: not a {kind} entry ({one_line(exc)}); computing it again")
        except CacheDamaged as exc:
            warn(f"{path}: {exc}; computing it again")
    value = compute()
    write_entry(path, key, dump(value))
    return value
