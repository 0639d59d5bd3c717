"""Datasets as in-memory tensors: decoded once, normalised per channel.

``digits`` (scikit-learn's 1797 real 8x8 handwritten digits) ships with scikit-learn
and needs no download. ``mnist``, ``fashion-mnist`` and ``cifar10`` go through
torchvision's own dataset classes; ``imagefolder`` reads ``root/{train,test}/<class>/*``.

Decoded file datasets are cached as ``.npy`` files under ``$FL_EE_CACHE`` (default
``~/.cache/fl-ee``), keyed by the source files' names, sizes and modification times.
Every process (the server and each Ray worker) memory-maps the same cache, so a
dataset is decoded once per machine, loads in a fraction of a second, and its pages
are shared between processes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fl_ee.cache import cache_root
from fl_ee.config import Config, DataConfig
from fl_ee.errors import UserError
from fl_ee.models import ModelSpec
from partitions import ClientSplit, client_splits

DIGITS_TEST_FRACTION = 0.25


@dataclass(frozen=True)
class TensorDataset:
    """A train/test split as float tensors (N, C, H, W), normalised, with int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    def model_spec(self, base_width: int, exit_head: str) -> ModelSpec:
        """The network shape that fits these images and labels."""
        _, c, h, w = self.train_x.shape
        return ModelSpec(c, h, w, self.num_classes, base_width, exit_head)


def _normalised(name: str, train: np.ndarray, train_y, test: np.ndarray, test_y) -> TensorDataset:
    """Scale to [0, 1] floats by the train maximum, then standardise each channel."""
    scale = float(train.max()) or 1.0
    tr = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32) / scale)
    te = torch.from_numpy(np.ascontiguousarray(test, dtype=np.float32) / scale)
    mean = tr.mean(dim=(0, 2, 3), keepdim=True)
    std = tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    labels = np.concatenate([np.asarray(train_y), np.asarray(test_y)])
    return TensorDataset(
        name=name,
        train_x=(tr - mean) / std,
        train_y=torch.as_tensor(np.asarray(train_y), dtype=torch.int64),
        test_x=(te - mean) / std,
        test_y=torch.as_tensor(np.asarray(test_y), dtype=torch.int64),
        num_classes=int(labels.max()) + 1,
    )


def _digits() -> TensorDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images[:, None, :, :]
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, bunch.target, test_size=DIGITS_TEST_FRACTION, stratify=bunch.target, random_state=0
    )
    return _normalised("digits", tr_x, tr_y, te_x, te_y)


def _torchvision(name: str, root: str, download: bool) -> TensorDataset:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except RuntimeError as exc:
        if download:
            raise UserError(f"could not download {name} into {root!r}: {exc}", key="data.download") from None
        raise UserError(
            f"{name} not found under {root!r}; set data.download=true to fetch it, "
            f"or point data.root at a folder that holds it (e.g. ../shared/data)",
            key="data.root",
        ) from None

    def images(ds) -> np.ndarray:
        data = np.asarray(ds.data)
        return data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # to NCHW

    return _normalised(name, images(train), train.targets, images(test), test.targets)


def _image_folder(root: str) -> TensorDataset:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    splits = {}
    for split in ("train", "test"):
        path = Path(root) / split
        if not path.is_dir():
            raise UserError(f"imagefolder needs {path}/<class>/<image> files; {path} is not a folder", key="data.root")
        try:
            splits[split] = ImageFolder(str(path))
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserError(f"{path}: {exc}", key="data.root") from None
    if splits["train"].classes != splits["test"].classes:
        raise UserError("train/ and test/ must hold the same class folders", key="data.root")

    def decode(ds: ImageFolder) -> tuple[np.ndarray, np.ndarray]:
        arrays = [np.asarray(Image.open(p).convert("RGB")) for p, _ in ds.samples]
        if len({a.shape for a in arrays}) != 1:
            raise UserError(f"{ds.root}: images differ in size; resize them to one size first", key="data.root")
        return np.stack(arrays).transpose(0, 3, 1, 2), np.asarray(ds.targets)

    tr_x, tr_y = decode(splits["train"])
    te_x, te_y = decode(splits["test"])
    return _normalised("imagefolder", tr_x, tr_y, te_x, te_y)


SOURCE_DIRS = {  # where each file dataset's files live under data.root
    "mnist": ("MNIST/raw",),
    "fashion-mnist": ("FashionMNIST/raw",),
    "cifar10": ("cifar-10-batches-py",),
    "imagefolder": ("train", "test"),
}
ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def _source_key(name: str, root: str) -> str | None:
    """A digest of the dataset's source files (names, sizes, mtimes); ``None`` if absent."""
    entries = []
    for sub in SOURCE_DIRS[name]:
        folder = Path(root) / sub
        if not folder.is_dir():
            return None
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                st = path.stat()
                entries.append(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}")
    payload = json.dumps([name, root, entries]).encode()
    return f"{name}-{hashlib.sha1(payload).hexdigest()[:16]}"


def _read_cache(folder: Path, name: str) -> TensorDataset:
    arrays = {a: torch.from_numpy(np.load(folder / f"{a}.npy", mmap_mode="c")) for a in ARRAYS}
    meta = json.loads((folder / "meta.json").read_text())
    return TensorDataset(name=name, num_classes=meta["num_classes"], **arrays)


def _write_cache(folder: Path, data: TensorDataset) -> None:
    """Write the arrays to a temporary folder, then rename it into place (atomic)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for a in ARRAYS:
            np.save(tmp / f"{a}.npy", getattr(data, a).numpy())
        (tmp / "meta.json").write_text(json.dumps({"num_classes": data.num_classes}))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is for every process of the user
        os.replace(tmp, folder)
    except OSError:  # another process cached it first, or the cache is not writable
        shutil.rmtree(tmp, ignore_errors=True)


def _decode(name: str, root: str, download: bool) -> TensorDataset:
    if name == "imagefolder":
        return _image_folder(root)
    return _torchvision(name, root, download)


@functools.lru_cache(maxsize=2)
def _load(name: str, root: str, download: bool) -> TensorDataset:
    if name == "digits":
        return _digits()
    key = _source_key(name, root)
    if key is not None and (cache_root() / key / "meta.json").is_file():
        return _read_cache(cache_root() / key, name)
    data = _decode(name, root, download)
    key = key or _source_key(name, root)  # a download has just created the files
    if key is not None:
        _write_cache(cache_root() / key, data)
    return data


def load_dataset(cfg: DataConfig) -> TensorDataset:
    """The configured dataset, decoded once per process and kept in memory."""
    root = str(Path(cfg.root).expanduser().resolve())
    return _load(cfg.name, root, cfg.download)


def run_splits(cfg: Config) -> tuple[ClientSplit, ...]:
    """Every client's train/test indices into the dataset's train split."""
    d = cfg.data
    labels = load_dataset(d).train_y.numpy()
    return client_splits(labels, d.num_clients, d.partitioner, d.alpha, d.shards_per_client, d.test_fraction, cfg.seed)


def client_data(cfg: Config, client_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A client's local train and test tensors (x_train, y_train, x_test, y_test)."""
    data = load_dataset(cfg.data)
    split = run_splits(cfg)[client_id]
    train, test = torch.from_numpy(split.train), torch.from_numpy(split.test)
    return data.train_x[train], data.train_y[train], data.train_x[test], data.train_y[test]
