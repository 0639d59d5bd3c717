"""Where a dataset's source files live and a digest of them, without importing torch.

The digest (names, sizes and modification times of the source files) keys the cache of
decoded datasets (:mod:`fl_ee.data.datasets`) and the record of ``fl-ee check``
(:mod:`fl_ee.federation.checkrecord`): both are rebuilt once the files change.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
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
            files = [source]
        elif source.is_dir():
            files = [path for path in sorted(source.rglob("*")) if path.is_file()]
        else:
            return None
        for path in files:
            st = path.stat()
            entries.append(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}")
    payload = json.dumps([name, root, entries]).encode()
    return f"{name}-{hashlib.sha1(payload).hexdigest()[:16]}"
