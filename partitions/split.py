"""Client partitions on flwr-datasets partitioners, plus each client's own test split.

The partitioners run on a one-column table of labels (with the row index carried
along), so they decide who holds which sample without touching the images.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fl_ee.core.atomic import write_npz
from fl_ee.core.cache import CacheDamaged, cache_root, checksum, unreadable
from fl_ee.core.errors import UserError, warn
from fl_ee.core.seeding import Stream, derive_seed, rng

if TYPE_CHECKING:  # imported where a split is computed: readers of the cache never pay for them (~2.5 s)
    from datasets import Dataset
    from flwr_datasets.partitioner import Partitioner

MIN_CLIENT_SAMPLES = 2  # one to train on, one to test on
CACHE_VERSION = 2  # bumped whenever the same parameters would give other splits (2: seed streams)


@dataclass(frozen=True)
class ClientSplit:
    """Indices into the dataset's train split: a client's local train and test samples."""

    train: np.ndarray
    test: np.ndarray


def _partitioner(scheme: str, num_clients: int, alpha: float, shards_per_client: int, seed: int) -> Partitioner:
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if scheme == "iid":
        return IidPartitioner(num_partitions=num_clients)
    if scheme == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=alpha,
            min_partition_size=MIN_CLIENT_SAMPLES,
            seed=seed,
        )
    if scheme == "shards":
        return PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_classes_per_partition=shards_per_client,
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    raise ValueError(f"unknown partitioner {scheme!r}")


def _indices(part: Dataset) -> np.ndarray:
    """The original row indices a partition holds, read as one column (not row by row)."""
    return np.sort(np.asarray(part.with_format("numpy")[:]["index"], dtype=np.int64))


def _how(scheme: str, alpha: float, shards_per_client: int) -> str:
    """The split's parameters, for a message."""
    if scheme == "dirichlet":
        return f"with Dirichlet alpha {alpha:g} (each needs {MIN_CLIENT_SAMPLES} samples)"
    if scheme == "shards":
        return f"with {shards_per_client} classes each (a class has fewer samples than the clients it must go to)"
    return f"(each needs {MIN_CLIENT_SAMPLES} samples)"


def _remedy(scheme: str) -> str:
    """What to change, and in which direction, when a split cannot be made."""
    if scheme == "dirichlet":
        return "lower data.num_clients or raise data.alpha"
    if scheme == "shards":
        return "lower data.shards_per_client or data.num_clients"
    return "lower data.num_clients"


def partition_indices(
    labels: np.ndarray, num_clients: int, scheme: str, alpha: float, shards_per_client: int, seed: int
) -> list[np.ndarray]:
    """Split sample indices over clients: ``iid``, ``dirichlet`` (label skew) or ``shards``.

    ``shards`` gives every client exactly ``shards_per_client`` classes. Rows are
    shuffled by ``seed`` first, so ``iid`` does not hand out label-sorted blocks.
    """
    labels = np.asarray(labels)
    most = len(labels) // MIN_CLIENT_SAMPLES
    if num_clients > most:
        raise UserError(f"{num_clients} clients need {MIN_CLIENT_SAMPLES} samples each, but the dataset has "
                        f"{len(labels)} training samples; use at most {most} clients", key="data.num_clients")
    classes = len(np.unique(labels))
    if scheme == "shards" and shards_per_client > classes:
        raise UserError(f"must be at most the number of classes ({classes}); lower data.shards_per_client",
                        key="data.shards_per_client")
    split_seed = derive_seed(seed, Stream.PARTITION)
    order = np.random.default_rng(split_seed).permutation(len(labels))
    partitioner = _partitioner(scheme, num_clients, alpha, shards_per_client, split_seed)
    from datasets import Dataset

    partitioner.dataset = Dataset.from_dict({"label": labels[order], "index": order})
    try:
        with warnings.catch_warnings():  # flwr-datasets warns on every Dirichlet resample; a failure says it once
            warnings.simplefilter("ignore", UserWarning)
            parts = [_indices(partitioner.load_partition(i)) for i in range(num_clients)]
    except ValueError:  # e.g. Dirichlet cannot give every client MIN_CLIENT_SAMPLES
        how = _how(scheme, alpha, shards_per_client)
        raise UserError(f"cannot split {len(labels)} samples over {num_clients} clients {how}; {_remedy(scheme)}",
                        key="data.num_clients") from None
    smallest = min(len(p) for p in parts)
    if smallest < MIN_CLIENT_SAMPLES:
        raise UserError(f"a client got {smallest} samples, but at least {MIN_CLIENT_SAMPLES} are needed; "
                        f"{_remedy(scheme)}", key="data.num_clients")
    return parts


def local_split(indices: np.ndarray, test_fraction: float, generator: np.random.Generator) -> ClientSplit:
    """Shuffle a client's samples and hold out ``test_fraction`` (at least one) for its tests."""
    order = generator.permutation(indices)
    n_test = min(len(order) - 1, max(1, round(test_fraction * len(order))))
    return ClientSplit(train=np.sort(order[n_test:]), test=np.sort(order[:n_test]))


def _compute_splits(
    labels: np.ndarray, num_clients: int, scheme: str, alpha: float, shards: int, test_fraction: float, seed: int
) -> tuple[ClientSplit, ...]:
    parts = partition_indices(labels, num_clients, scheme, alpha, shards, seed)
    return tuple(local_split(p, test_fraction, rng(seed, Stream.LOCAL_SPLIT, cid)) for cid, p in enumerate(parts))


def _read(path: Path, num_clients: int, num_samples: int) -> tuple[ClientSplit, ...]:
    """Cached splits, checked: no pickles, exactly the expected arrays, valid indices, the stored checksum.

    Raises :class:`~fl_ee.core.cache.CacheDamaged` when anything does not match.
    """
    names = [f"{kind}{i}" for i in range(num_clients) for kind in ("train", "test")]
    try:
        with np.load(path, allow_pickle=False) as stored:
            if not isinstance(stored, np.lib.npyio.NpzFile):
                raise CacheDamaged("not an .npz archive")
            if set(stored.files) != {*names, "checksum"}:
                raise CacheDamaged(f"holds other arrays than the {num_clients} clients' splits")
            arrays = {n: stored[n] for n in names}
            stored_sum = stored["checksum"]
    except FileNotFoundError:
        raise CacheDamaged("missing") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:  # truncated, pickled, not a zip
        raise CacheDamaged(f"unreadable ({unreadable(exc)})") from None
    if stored_sum.shape != () or stored_sum.item() != checksum(*arrays.values()):
        raise CacheDamaged("does not match its checksum (edited or damaged)")
    for name, array in arrays.items():
        valid = array.dtype == np.int64 and array.ndim == 1 and len(array) > 0
        if not valid or not 0 <= array.min() <= array.max() < num_samples:
            raise CacheDamaged(f"{name} is not a list of sample indices below {num_samples}")
    return tuple(ClientSplit(arrays[f"train{i}"], arrays[f"test{i}"]) for i in range(num_clients))


def _write(path: Path, splits: tuple[ClientSplit, ...]) -> None:
    """Save with a checksum, atomically (replaces a damaged file)."""
    arrays = {f"{kind}{i}": np.asarray(getattr(s, kind), dtype=np.int64)
              for i, s in enumerate(splits) for kind in ("train", "test")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_npz(path, {"checksum": np.array(checksum(*arrays.values())), **arrays}, fsync=False)
    except OSError:  # an unwritable cache only costs the next process a recomputation
        pass


@functools.lru_cache(maxsize=4)
def _cached_splits(
    labels: bytes, num_clients: int, scheme: str, alpha: float, shards: int, test_fraction: float, seed: int
) -> tuple[ClientSplit, ...]:
    params = (num_clients, scheme, alpha, shards, test_fraction, seed)
    digest = hashlib.sha1(labels + repr((CACHE_VERSION, *params)).encode()).hexdigest()[:16]
    path = cache_root() / f"splits-{digest}.npz"
    num_samples = len(labels) // np.dtype(np.int64).itemsize
    if path.exists():
        try:
            return _read(path, num_clients, num_samples)
        except CacheDamaged as exc:
            warn(f"{path}: {exc}; computing the splits again")
    splits = _compute_splits(np.frombuffer(labels, dtype=np.int64), *params)
    _write(path, splits)
    return splits


def client_splits(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    alpha: float,
    shards_per_client: int,
    test_fraction: float,
    seed: int,
) -> tuple[ClientSplit, ...]:
    """Every client's train/test indices: computed once per machine (cached on disk), kept per process."""
    key = np.ascontiguousarray(labels, dtype=np.int64).tobytes()
    return _cached_splits(key, num_clients, scheme, alpha, shards_per_client, test_fraction, seed)


def unseen_clients(num_clients: int, count: int, seed: int) -> frozenset[int]:
    """The ids of ``count`` of ``num_clients`` clients held out of training (``data.unseen_fraction``), drawn by seed.

    Uniformly over all clients, whatever their tier, as pFL-Bench draws its unseen clients.
    """
    return frozenset(int(c) for c in rng(seed, Stream.UNSEEN).choice(num_clients, size=count, replace=False))
