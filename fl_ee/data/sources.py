"""Where a dataset's source files live, whether they are there, and a digest of them, without importing torch.

A dataset whose files are missing is refused here (:func:`require_sources`), so that
``fl-ee check`` says so without loading torch or torchvision. The digest (names, sizes
and modification times of the source files) keys the cache of decoded datasets
(:mod:`fl_ee.data.datasets`) and the record of ``fl-ee check``
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


IDX_FILES = {  # torchvision's raw MNIST layout: (images, labels) per split
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
PICKLE_FILES = {  # the files torchvision's CIFAR classes read under SOURCE_DIRS (train, test, then meta)
    "cifar10": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                "batches.meta"),
    "cifar100": ("train", "test", "meta"),
}
OFFLINE_COPIES = ("data", "../shared/data")  # where the README's examples keep datasets, from the working directory
IMAGE_ARCHIVES = {"cifar10": "cifar10-jpeg.tar.gz"}  # imagefolder roots of the presets: the archive that unpacks one


def digits_root() -> str:
    """The folder of scikit-learn's bundled data files, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the digits dataset needs scikit-learn (pip install scikit-learn)", key="data.name")
    return str(Path(spec.submodule_search_locations[0]) / "datasets")


def dataset_root(cfg: DataConfig) -> str:
    """The absolute folder the configured dataset's source files are under."""
    return digits_root() if cfg.name == "digits" else str(Path(cfg.root).expanduser().resolve())


def missing_source(name: str, root: str) -> Path | None:
    """The first file torchvision needs for ``name`` (mnist, fashion-mnist, cifar10, cifar100) not under ``root``."""
    folder = Path(root) / SOURCE_DIRS[name][0]
    names = PICKLE_FILES.get(name) or [f for pair in IDX_FILES.values() for f in pair]
    return next((folder / f for f in names if not (folder / f).is_file()), None)


def _copy_elsewhere(name: str, root: str) -> str | None:
    """The first of :data:`OFFLINE_COPIES` (as written) other than ``root`` that holds ``name``'s files."""
    return next((c for c in OFFLINE_COPIES if Path(c).resolve() != Path(root)
                 and missing_source(name, str(Path(c).resolve())) is None), None)


def _image_folder_fix(root: Path) -> str:
    """What makes ``root`` an image folder: extracting the archive of :data:`IMAGE_ARCHIVES` found, or ``--set``."""
    other = "add --set data.root=DIR for the folder DIR that holds train/<class>/ and test/<class>/ images"
    archive = IMAGE_ARCHIVES.get(root.name)
    if archive is None:
        return other
    found = next((Path(c) / archive for c in OFFLINE_COPIES if (Path(c) / archive).is_file()), None)
    if found is None:
        return f"{other}, or --set data.name={root.name} --set data.download=true to download torchvision's copy"
    return f"extract {found} there (mkdir -p {root.parent} && tar xzf {found} -C {root.parent}), or {other}"


def require_sources(name: str, root: str, download: bool) -> None:
    """Refuse, in one line saying where they are or how to get them, a dataset's missing source files.

    ``imagefolder`` needs ``train/`` and ``test/`` folders; a torchvision dataset every file
    its class reads, unless ``download`` fetches them. ``digits`` ships with scikit-learn.
    """
    if name == "imagefolder":
        for split in ("train", "test"):
            path = Path(root) / split
            if not path.is_dir():
                raise UserError(f"imagefolder needs {path}/<class>/<image> files; {path} is not a folder; "
                                f"{_image_folder_fix(Path(root))}", key="data.root")
    elif name != "digits" and not download and (missing := missing_source(name, root)) is not None:
        found = _copy_elsewhere(name, root)
        fix = (f"it is in {found}: add --set data.root={found}" if found else
               f"add --set data.root=DIR for the folder DIR that holds {SOURCE_DIRS[name][0]}/, or --set "
               f"data.download=true to download it")
        raise UserError(f"{name} not found under {root!r} (no {Path(missing).relative_to(root)}); {fix}",
                        key="data.root")


def source_key(name: str, root: str) -> str | None:
    """A digest of the dataset's source files (names, sizes, mtimes); ``None`` if absent."""
    entries = []
    for sub in SOURCE_DIRS[name]:
        source = Path(root) / sub
        if source.is_file():
            st = source.stat()
            entries.append(f"{sub}:{st.st_size}:{st.st_mtime_ns}")
        elif source.is_dir():
            _tree(str(source), f"{Path(sub).as_posix()}/", entries)
        else:
            return None
    payload = json.dumps([name, root, entries]).encode()
    return f"{name}-{hashlib.sha1(payload).hexdigest()[:16]}"


def _tree(folder: str, prefix: str, found: list[str]) -> None:
    """Add ``PATH:SIZE:MTIME`` of every file under ``folder`` to ``found``, its path as ``prefix`` + its path there.

    The files ``Path.rglob`` finds (links to files included, none to folders followed), in
    the order of their sorted paths (each folder's entries by name, depth first), at one
    ``stat`` each instead of three.
    """
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except PermissionError:  # as rglob: a folder it may not read is passed over
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _tree(entry.path, f"{prefix}{entry.name}/", found)
        elif entry.is_file():
            st = entry.stat()
            found.append(f"{prefix}{entry.name}:{st.st_size}:{st.st_mtime_ns}")
