"""Datasets as in-memory tensors: decoded once per process, normalised per channel.

``digits`` (scikit-learn's 1797 real 8x8 handwritten digits) ships with scikit-learn
and needs no download. ``mnist``, ``fashion-mnist`` and ``cifar10`` go through
torchvision's own dataset classes; ``imagefolder`` reads ``root/{train,test}/<class>/*``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fl_ee.config import DataConfig
from fl_ee.errors import UserError
from fl_ee.models import ModelSpec

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


@functools.lru_cache(maxsize=2)
def _load(name: str, root: str, download: bool) -> TensorDataset:
    if name == "digits":
        return _digits()
    if name == "imagefolder":
        return _image_folder(root)
    return _torchvision(name, root, download)


def load_dataset(cfg: DataConfig) -> TensorDataset:
    """The configured dataset, decoded once per process and kept in memory."""
    root = str(Path(cfg.root).expanduser().resolve())
    return _load(cfg.name, root, cfg.download)
