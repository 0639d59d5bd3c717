"""Datasets as in-memory tensors: decoded once, normalised per channel.

``digits`` (scikit-learn's 1797 real 8x8 handwritten digits) ships with scikit-learn
and needs no download. ``mnist``, ``fashion-mnist``, ``cifar10`` and ``cifar100`` go
through torchvision's own dataset classes; ``imagefolder`` reads ``root/{train,test}/<class>/*``.
Source files are checked before they are decoded (IDX headers and sizes, the CIFAR
pickles' md5s, every image), and labels outside the dataset's classes are refused, each
problem as one line naming the file.

Decoded datasets (``digits`` too) are cached as ``.npy`` files under ``$FL_EE_CACHE`` (default
``~/.cache/fl-ee``), keyed by the source files' names, sizes and modification times,
with each array's dtype, shape and xxh3-128 checksum in ``meta.json``. Every process
(the server and each Ray worker) memory-maps the same cache after verifying it, so a
dataset is decoded once per machine, loads in a fraction of a second, and its pages
are shared between processes; a damaged cache is decoded again and replaced. A process
that reads ``digits`` from the cache never imports scikit-learn (some 2 s).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_ee.core.cache import CacheDamaged, cache_root, checksum, discard, load_array, one_line
from fl_ee.core.config import Config, DataConfig, ModelConfig
from fl_ee.core.errors import UserError, shortened, warn
from fl_ee.core.seeding import Stream, rng
from fl_ee.data.sources import (
    IDX_FILES,
    SOURCE_DIRS,
    dataset_root,
    missing_source,
    require_sources,
    source_key,
)
from fl_ee.models import ModelSpec, model_spec
from partitions import ClientSplit, client_splits, unseen_clients

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

    def model_spec(self, cfg: ModelConfig) -> ModelSpec:
        """The network of ``cfg`` that fits these images and labels."""
        _, c, h, w = self.train_x.shape
        return model_spec(cfg, c, h, w, self.num_classes)


def _float32(images: np.ndarray) -> torch.Tensor:
    """``images`` as float32 (N, C, H, W) with the standard strides.

    A one-channel array (``x[:, None]``) may carry a stride for C that makes torch take it for
    channels-last; its convolutions would then take another kernel and round differently, and a run's
    results would depend on whether its data came from the decoder or from the cache.
    """
    return torch.empty(images.shape, dtype=torch.float32).copy_(torch.from_numpy(np.ascontiguousarray(images)))


def _normalised(name: str, train: np.ndarray, train_y, test: np.ndarray, test_y, num_classes: int) -> TensorDataset:
    """Scale to [0, 1] floats by the train maximum, then standardise each channel."""
    scale = float(train.max()) or 1.0
    # in place, on torch's threads: the same bits as NumPy's division, some 30x faster
    tr, te = _float32(train).div_(scale), _float32(test).div_(scale)
    mean = tr.mean(dim=(0, 2, 3), keepdim=True)
    std = tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return TensorDataset(
        name=name,
        train_x=tr.sub_(mean).div_(std),
        train_y=torch.as_tensor(np.asarray(train_y), dtype=torch.int64),
        test_x=te.sub_(mean).div_(std),
        test_y=torch.as_tensor(np.asarray(test_y), dtype=torch.int64),
        num_classes=num_classes,
    )


def _bad_label(labels: np.ndarray, num_classes: int) -> str | None:
    """Why ``labels`` are not all in 0..num_classes-1, or ``None`` when they are."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        return f"labels must be one integer per sample, found {labels.dtype} of shape {labels.shape}"
    outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(outside):
        i = int(outside[0])
        return (f"label {int(labels[i])} of sample {i} is outside the {num_classes} classes 0..{num_classes - 1}"
                f" ({len(outside)} such label{'s' if len(outside) > 1 else ''})")
    return None


def _check_labels(source: str, labels, num_classes: int) -> None:
    """Refuse labels outside the dataset's classes, naming the file they came from."""
    problem = _bad_label(np.asarray(labels), num_classes)
    if problem:
        raise UserError(f"{source}: {problem}", key="data.root")


def _digits() -> TensorDataset:
    """scikit-learn's digits, split 75/25 stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images[:, None, :, :]
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, bunch.target, test_size=DIGITS_TEST_FRACTION, stratify=bunch.target, random_state=0
    )
    return _normalised("digits", tr_x, tr_y, te_x, te_y, num_classes=10)


TORCHVISION_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}


def _check_idx(path: Path, ndim: int) -> tuple[int, ...]:
    """Check an IDX file of unsigned bytes (magic, dimensions, size) before torchvision reads it.

    torchvision's reader asserts on a bad magic number and fails a truncated file with an
    error that reads as "not found"; this names the file and the problem instead.
    """
    header_size = 4 + 4 * ndim
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            header = handle.read(header_size)
    except OSError as exc:
        raise UserError(f"{path}: cannot be read: {exc.strerror or one_line(exc)}", key="data.root") from None
    magic = bytes([0, 0, 0x08, ndim])
    if header[:2] == b"\x1f\x8b":
        raise UserError(f"{path}: is gzip-compressed; extract it (gunzip) first", key="data.root")
    if len(header) >= 4 and header[:4] != magic:
        raise UserError(f"{path}: bad magic number 0x{header[:4].hex()}, expected 0x{magic.hex()} "
                        f"(an IDX file of unsigned bytes with {ndim} dimension{'s' if ndim > 1 else ''})",
                        key="data.root")
    if len(header) < header_size:
        raise UserError(f"{path}: truncated: expected at least {header_size} bytes (the IDX header), found {size}",
                        key="data.root")
    dims = struct.unpack(f">{ndim}I", header[4:])
    expected = header_size + math.prod(dims)
    if size != expected:
        problem = "truncated" if size < expected else "too long"
        raise UserError(f"{path}: {problem}: expected {expected} bytes ({' x '.join(map(str, dims))} "
                        f"values after the header), found {size}", key="data.root")
    return dims


PICKLED = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}  # torchvision reads these from pickles


def _torchvision_class(name: str) -> Any:
    from torchvision import datasets

    return {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10,
            "cifar100": datasets.CIFAR100}[name]


def _pickle_files(name: str) -> tuple[Path, list[tuple[str, str]]]:
    """A CIFAR dataset's folder under ``data.root`` and its (file, published md5) pairs."""
    cls = _torchvision_class(name)
    pairs = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
    return Path(cls.base_folder), [(filename, md5) for filename, md5 in pairs]


def _check_source_files(name: str, root: str) -> None:
    """Check the files torchvision is about to read; unpickle nothing.

    MNIST-style IDX files get their header and size checked. The CIFAR files are
    pickles: each must match the md5 torchvision knows for the published file, so a
    damaged or planted file is refused here, before anything is unpickled.
    """
    from torchvision.datasets.utils import check_integrity

    if name in PICKLED:
        sub, files = _pickle_files(name)
        for filename, md5 in files:
            if not check_integrity(str(Path(root) / sub / filename), md5):
                raise UserError(f"{Path(root) / sub / filename}: corrupted: its md5 is not that of the published "
                                f"{PICKLED[name]} file (torchvision unpickles only the published files; use "
                                f"data.name=imagefolder for other copies)", key="data.root")
        return
    raw = Path(root) / SOURCE_DIRS[name][0]
    for images_file, labels_file in IDX_FILES.values():
        images = _check_idx(raw / images_file, 3)
        labels = _check_idx(raw / labels_file, 1)
        if images[0] != labels[0]:
            raise UserError(f"{raw / labels_file}: {labels[0]} labels for the {images[0]} images of {images_file}",
                            key="data.root")


def _torchvision(name: str, root: str, download: bool) -> TensorDataset:
    cls = _torchvision_class(name)
    require_sources(name, root, download)
    if missing_source(name, root) is None:
        _check_source_files(name, root)
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except RuntimeError as exc:
        if download:
            raise UserError(f"could not download {name} into {root!r}: {one_line(exc)}", key="data.download") from None
        raise UserError(f"{name} under {root!r} could not be read: {one_line(exc)}", key="data.root") from None
    except (AssertionError, ValueError, TypeError, EOFError, OSError, struct.error) as exc:  # checked above; a race
        raise UserError(f"{name} under {root!r} could not be read: {one_line(exc)}", key="data.root") from None

    def images(ds) -> np.ndarray:
        data = np.asarray(ds.data)
        return data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # to NCHW

    classes = TORCHVISION_CLASSES[name]
    for split, ds in (("train", train), ("test", test)):
        source = (Path(root) / SOURCE_DIRS[name][0] / IDX_FILES[split][1] if name not in PICKLED
                  else f"{Path(root) / SOURCE_DIRS[name][0]} ({split} batches)")
        _check_labels(str(source), np.asarray(ds.targets), classes)
    return _normalised(name, images(train), train.targets, images(test), test.targets, classes)


def _image_folder(root: str) -> TensorDataset:
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import ImageFolder

    require_sources("imagefolder", root, download=False)
    splits = {}
    for split in ("train", "test"):
        path = Path(root) / split
        try:
            splits[split] = ImageFolder(str(path))
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserError(f"{path}: {one_line(exc)}", key="data.root") from None
    if splits["train"].classes != splits["test"].classes:
        raise UserError("train/ and test/ must hold the same class folders", key="data.root")

    def read(path: str) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except UnidentifiedImageError:
            raise UserError(f"{path}: not an image file (PIL cannot identify it)", key="data.root") from None
        except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as exc:
            raise UserError(f"{path}: cannot decode the image: {one_line(exc)}", key="data.root") from None

    def decode(ds: ImageFolder) -> tuple[np.ndarray, np.ndarray]:
        arrays = [read(p) for p, _ in ds.samples]
        odd = next((i for i, a in enumerate(arrays) if a.shape != arrays[0].shape), None)
        if odd is not None:
            raise UserError(f"{ds.root}: images differ in size ({ds.samples[odd][0]} is "
                            f"{arrays[odd].shape[1]}x{arrays[odd].shape[0]}, {ds.samples[0][0]} is "
                            f"{arrays[0].shape[1]}x{arrays[0].shape[0]}); resize them to one size first",
                            key="data.root")
        return np.stack(arrays).transpose(0, 3, 1, 2), np.asarray(ds.targets)

    classes = len(splits["train"].classes)
    tr_x, tr_y = decode(splits["train"])
    te_x, te_y = decode(splits["test"])
    _check_labels(str(Path(root) / "train"), tr_y, classes)
    _check_labels(str(Path(root) / "test"), te_y, classes)
    return _normalised("imagefolder", tr_x, tr_y, te_x, te_y, classes)


ARRAYS = ("train_x", "train_y", "test_x", "test_y")
CACHE_FORMAT = 2  # the layout of meta.json; a cache in another layout is rebuilt


def _meta_checksum(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _read_meta(folder: Path, name: str) -> dict:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        raise CacheDamaged("meta.json is missing") from None
    except (OSError, ValueError) as exc:
        raise CacheDamaged(f"meta.json is unreadable ({one_line(exc)})") from None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise CacheDamaged("meta.json is in another format (an older fl-ee wrote it)")
    if meta.get("checksum") != _meta_checksum(meta):
        raise CacheDamaged("meta.json does not match its checksum (edited or damaged)")
    if meta.get("name") != name or set(meta.get("arrays", ())) != set(ARRAYS):
        raise CacheDamaged(f"meta.json describes another dataset than {name}")
    return meta


def _read_cache(folder: Path, name: str) -> TensorDataset:
    """The cached tensors, memory-mapped, after checking them against ``meta.json``.

    Every array's shape and dtype, its file size (a truncated file cannot be mapped) and
    its xxh3-128 checksum are verified, in every process: hashing Fashion-MNIST's 220 MB
    costs 0.01-0.05 s. Raises :class:`CacheDamaged` when anything does not match.
    """
    meta = _read_meta(folder, name)
    arrays = {}
    for a in ARRAYS:
        array = load_array(folder / f"{a}.npy")
        want = meta["arrays"][a]
        if array.dtype.str != want["dtype"] or list(array.shape) != want["shape"]:
            raise CacheDamaged(f"{a}.npy holds {array.dtype.str} {list(array.shape)}, "
                               f"meta.json says {want['dtype']} {want['shape']}")
        if checksum(array) != want["xxh3_128"]:
            raise CacheDamaged(f"{a}.npy does not match its checksum (edited or damaged)")
        arrays[a] = array
    for a in ("train_y", "test_y"):
        problem = _bad_label(arrays[a], meta["num_classes"])
        if problem:
            raise CacheDamaged(f"{a}.npy: {problem}")
    return TensorDataset(name=name, num_classes=meta["num_classes"],
                         **{a: torch.from_numpy(array) for a, array in arrays.items()})


def _write_cache(folder: Path, data: TensorDataset, replace: bool = False) -> None:
    """Write the arrays and their checksums to a temporary folder, then rename it into place (atomic).

    ``replace`` first moves a damaged folder out of the way; otherwise a folder another
    process cached first is kept.
    """
    arrays = {a: getattr(data, a).numpy() for a in ARRAYS}
    meta: dict = {
        "format": CACHE_FORMAT,
        "name": data.name,
        "num_classes": data.num_classes,
        "arrays": {a: {"dtype": x.dtype.str, "shape": list(x.shape), "xxh3_128": checksum(x)}
                   for a, x in arrays.items()},
    }
    meta["checksum"] = _meta_checksum(meta)
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        for a, x in arrays.items():
            np.save(tmp / f"{a}.npy", x, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is for every process of the user
        if replace:
            discard(folder)
        os.replace(tmp, folder)
    except OSError:  # another process cached it first, or the cache is not writable
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _decode(name: str, root: str, download: bool) -> TensorDataset:
    if name == "digits":
        return _digits()
    if name == "imagefolder":
        return _image_folder(root)
    return _torchvision(name, root, download)


@functools.lru_cache(maxsize=2)
def _load(name: str, root: str, download: bool) -> TensorDataset:
    key = source_key(name, root)
    damaged = False
    if key is not None and (cache_root() / key).exists():
        try:
            return _read_cache(cache_root() / key, name)
        except CacheDamaged as exc:
            warn(f"{cache_root() / key}: {exc}; decoding {name} again")
            damaged = True
    data = _decode(name, root, download)
    key = key or source_key(name, root)  # a download has just created the files
    if key is not None:
        _write_cache(cache_root() / key, data, replace=damaged)
    return data


def load_dataset(cfg: DataConfig) -> TensorDataset:
    """The configured dataset, decoded once per process and kept in memory."""
    root = dataset_root(cfg)
    try:
        return _load(cfg.name, root, cfg.download)
    except OSError as exc:  # a path the file system refuses: a name too long, a folder it may not search
        where = shortened(str(exc.filename or root))
        raise UserError(f"{where}: {exc.strerror or one_line(exc)}", key="data.root") from None


def run_splits(cfg: Config) -> tuple[ClientSplit, ...]:
    """Every client's train/test indices into the dataset's train split."""
    d = cfg.data
    return _splits(load_dataset(d).train_y, d.num_clients, d.partitioner, d.alpha, d.shards_per_client,
                   d.test_fraction, cfg.seed)


@functools.lru_cache(maxsize=4)
def _splits(labels: torch.Tensor, *params: Any) -> tuple[ClientSplit, ...]:
    """:func:`~partitions.split.client_splits` of a loaded dataset's labels, found by the tensor itself.

    ``client_splits`` finds its splits by the labels' bytes, which a client call paid to copy
    and hash (half a millisecond at 60,000 labels); a dataset decoded again is a new tensor.
    """
    return client_splits(labels.numpy(), *params)


def run_unseen(cfg: Config) -> frozenset[int]:
    """The run's unseen clients (``data.unseen_fraction``): never trained, evaluated apart."""
    return unseen_clients(cfg.data.num_clients, cfg.data.unseen_count, cfg.seed)


def calibration_size(num_train: int, fraction: float) -> int:
    """How many of ``num_train`` samples a client holds out for calibration: none at 0, else one to n - 1."""
    return 0 if fraction == 0 else max(0, min(num_train - 1, max(1, round(fraction * num_train))))


def _train_and_calibration(cfg: Config, client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A client's training indices and its calibration indices (its whole train split when none is held out)."""
    train = run_splits(cfg)[client_id].train
    n = calibration_size(len(train), cfg.exit_policy.calibration_fraction)
    if n == 0:
        return train, train
    order = rng(cfg.seed, Stream.CALIBRATION, client_id).permutation(train)
    return np.sort(order[n:]), np.sort(order[:n])


def client_data(cfg: Config, client_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A client's local train and test tensors (x_train, y_train, x_test, y_test); train omits calibration samples."""
    data = load_dataset(cfg.data)
    train = torch.from_numpy(_train_and_calibration(cfg, client_id)[0])
    test = torch.from_numpy(run_splits(cfg)[client_id].test)
    return data.train_x[train], data.train_y[train], data.train_x[test], data.train_y[test]


def client_calibration(cfg: Config, client_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A client's calibration samples: ``exit_policy.calibration_fraction`` of its train split, held out of training.

    At fraction 0 nothing is held out and the client calibrates on its training samples.
    """
    data = load_dataset(cfg.data)
    held_out = torch.from_numpy(_train_and_calibration(cfg, client_id)[1])
    return data.train_x[held_out], data.train_y[held_out]
