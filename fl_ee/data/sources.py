"""Where a dataset's source files live and a digest of them, without importing torch.

The digest (names, sizes and modification times of the source files) keys the cache of
decoded datasets (:mod:`fl_ee.data.datasets`) and the record of ``fl-ee check``
(:mod:`fl_ee.federation.checkrecord`): both are rebuilt once the files change.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from fl_ee.core.config import DataConfig
from fl_ee.core.errors import UserError

SOURCE_DIRS = {  # where each dataset's files live under data.root (digits: in scikit-learn's own folder)
    "digits": ("data/digits.csv.gz",),
    "mnist": ("MNIST/raw",),
    "fashion-mnist": ("FashionMNIST/raw",),
    "cifar10": ("cifar-10-batches-py",),
    "cifar100": ("cifar-100-python",),
    "imagefolder": ("train", "test"),
}


def digits_root() -> str:
    """The folder of scikit-learn's bundled data files, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the digits dataset needs scikit-learn (pip install scikit-learn)", key="data.name")
    return str(Path(spec.submodule_search_locations[0]) / "datasets")


def dataset_root(cfg: DataConfig) -> str:
    """The absolute folder the configured dataset's source files are under."""
    return digits_root() if cfg.name == "digits" else str(Path(cfg.root).expanduser().resolve())


def source_key(name: str, root: str) -> str | None:
    """A digest of the dataset's source files (names, sizes, mtimes); ``None`` if absent."""
    entries = []
    for sub in SOURCE_DIRS[name]:
        source = Path(root) / sub
        if source.is_file():
            st = source.stat()
            entries.append(f"{sub}:{st.st_size}:{st.st_mtime_ns}")
        elif source.is_dir():
            files: list[tuple[tuple[str, ...], int, int]] = []
            _tree(str(source), Path(sub).parts, files)
            files.sort()  # in rglob's order: by path parts
            entries += [f"{'/'.join(parts)}:{size}:{mtime}" for parts, size, mtime in files]
        else:
            return None
    payload = json.dumps([name, root, entries]).encode()
    return f"{name}-{hashlib.sha1(payload).hexdigest()[:16]}"


def _tree(folder: str, parts: tuple[str, ...], found: list[tuple[tuple[str, ...], int, int]]) -> None:
    """Add every file under ``folder`` to ``found``: its path parts (``parts`` first), size and mtime.

    The files ``Path.rglob`` finds (links to files included, none to folders followed), at
    one ``stat`` each instead of three.
    """
    try:
        entries = list(os.scandir(folder))
    except PermissionError:  # as rglob: a folder it may not read is passed over
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _tree(entry.path, (*parts, entry.name), found)
        elif entry.is_file():
            st = entry.stat()
            found.append(((*parts, entry.name), st.st_size, st.st_mtime_ns))
