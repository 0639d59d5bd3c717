"""Nothing lost, nothing hangs: damaged data and caches end in one line or a rebuild, never a pickle run.

Every corrupt input is a copy of the real files in tmp_path (../shared/data is never touched).
"""

import json
import os
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch

from fl_ee.cli import main
from fl_ee.core.config import DataConfig
from fl_ee.core.errors import UserError
from fl_ee.data.datasets import _load, load_dataset
from fl_ee.data.sources import source_key
from inprocess import sets
from partitions import client_splits
from partitions.split import _cached_splits

RAW = "FashionMNIST/raw"
TRAIN_IMAGES, TRAIN_LABELS = f"{RAW}/train-images-idx3-ubyte", f"{RAW}/train-labels-idx1-ubyte"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """A cache of this test's own, and no dataset or split remembered from another test."""
    monkeypatch.setenv("FL_EE_CACHE", str(tmp_path / "cache"))
    _load.cache_clear()
    _cached_splits.cache_clear()
    yield tmp_path / "cache"
    _load.cache_clear()
    _cached_splits.cache_clear()


@pytest.fixture
def fmnist(shared_data, tmp_path):
    """A private copy of the real Fashion-MNIST files, to damage."""
    root = tmp_path / "data"
    (root / RAW).mkdir(parents=True)
    for path in (shared_data / RAW).iterdir():
        shutil.copyfile(path, root / RAW / path.name)
    return root


@pytest.fixture
def cifar_jpegs(cifar10_sample, tmp_path):
    """A private copy of the session's real CIFAR-10 JPEGs (root/{train,test}/<class>/*.jpg), to damage."""
    return shutil.copytree(cifar10_sample, tmp_path / "cifar10")


class Plant:
    """Unpickling this creates ``marker``: a stand-in for arbitrary code in a planted pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def evil_array(marker) -> np.ndarray:
    array = np.empty(1, dtype=object)
    array[0] = Plant(marker)
    return array


def run_error(capsys, tmp_path, *overrides: str) -> str:
    """``fl-ee run`` with these overrides: exit 2, one line on stderr, no run directory, no Ray."""
    out = tmp_path / "run"
    assert main(["run", *sets(overrides), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fl-ee: error: data.root: ") and err.count("\n") == 1, err
    assert not out.exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    return err.strip()


# --- 1-3: damaged Fashion-MNIST files -------------------------------------------------


def test_truncated_idx_file_is_named_with_its_sizes(fmnist, tmp_path, capsys):
    path = fmnist / TRAIN_IMAGES
    os.truncate(path, 47040016 // 2)
    err = run_error(capsys, tmp_path, "data.name=fashion-mnist", f"data.root={fmnist}")
    assert err == (f"fl-ee: error: data.root: {path}: truncated: expected 47040016 bytes "
                   f"(60000 x 28 x 28 values after the header), found 23520008")


def test_bad_magic_number_is_named_not_an_assertion(fmnist, tmp_path, capsys):
    path = fmnist / TRAIN_LABELS
    with path.open("r+b") as handle:
        handle.write(b"\xde\xad\xbe\xef")
    err = run_error(capsys, tmp_path, "data.name=fashion-mnist", f"data.root={fmnist}")
    assert err == (f"fl-ee: error: data.root: {path}: bad magic number 0xdeadbeef, expected 0x00000801 "
                   f"(an IDX file of unsigned bytes with 1 dimension)")


def test_gzipped_idx_file_says_to_extract_it(fmnist):
    import gzip

    path = fmnist / TRAIN_LABELS
    path.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(UserError, match="is gzip-compressed; extract it") as info:
        load_dataset(DataConfig(name="fashion-mnist", root=str(fmnist)))
    assert info.value.key == "data.root" and str(path) in str(info.value)


def test_labels_outside_the_classes_are_refused_and_nothing_is_cached(fmnist, tmp_path, capsys, private_cache):
    path = fmnist / TRAIN_LABELS
    labels = bytearray(path.read_bytes())
    labels[8 + 5] = labels[8 + 700] = 200  # samples 5 and 700 get label 200
    path.write_bytes(bytes(labels))
    err = run_error(capsys, tmp_path, "data.name=fashion-mnist", f"data.root={fmnist}")
    assert err == (f"fl-ee: error: data.root: {path}: label 200 of sample 5 is outside the 10 classes 0..9 "
                   f"(2 such labels)")
    assert not private_cache.exists() or not list(private_cache.glob("fashion-mnist-*"))


def test_cifar10_pickle_batches_are_unpickled_only_when_their_md5_is_the_published_one(tmp_path):
    # torchvision unpickles cifar-10-batches-py; planted batches fail the md5 check before that
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "data" / CIFAR10.base_folder
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    for name, _ in [*CIFAR10.train_list, *CIFAR10.test_list, (CIFAR10.meta["filename"], None)]:
        (folder / name).write_bytes(pickle.dumps(Plant(marker)))
    with pytest.raises(UserError, match="corrupted: its md5 is not that of the published CIFAR-10 file") as info:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path / "data")))
    assert str(folder / "data_batch_1") in str(info.value) and not marker.exists()


# --- 6: corrupt images ----------------------------------------------------------------


def test_truncated_jpeg_is_named(cifar_jpegs, tmp_path, capsys):
    path = cifar_jpegs / "train" / "cat" / "0001.jpg"
    os.truncate(path, path.stat().st_size // 2)
    err = run_error(capsys, tmp_path, "data.name=imagefolder", f"data.root={cifar_jpegs}")
    assert err.startswith(f"fl-ee: error: data.root: {path}: cannot decode the image: ")
    assert "truncated" in err.lower()


def test_text_file_named_jpg_is_named(cifar_jpegs):
    path = cifar_jpegs / "test" / "dog" / "x.jpg"
    path.write_text("not an image\n")
    with pytest.raises(UserError) as info:
        load_dataset(DataConfig(name="imagefolder", root=str(cifar_jpegs)))
    assert str(info.value) == f"data.root: {path}: not an image file (PIL cannot identify it)"


# --- 4-5: the decoded cache -----------------------------------------------------------


def _cache_folder(cache, name, root):
    return cache / source_key(name, str(root))


def _flip_last_byte(path):
    with path.open("r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 1]))


def _edit_meta(folder):
    meta = json.loads((folder / "meta.json").read_text())
    meta["num_classes"] = 201
    (folder / "meta.json").write_text(json.dumps(meta))


DAMAGE = {
    "truncated-npy": lambda f, _: os.truncate(f / "train_x.npy", (f / "train_x.npy").stat().st_size // 2),
    "missing-array": lambda f, _: (f / "test_y.npy").unlink(),
    "flipped-byte": lambda f, _: _flip_last_byte(f / "train_y.npy"),
    "labels-200": lambda f, _: np.save(f / "train_y.npy", np.full(len(np.load(f / "train_y.npy")), 200)),
    "edited-meta": lambda f, _: _edit_meta(f),
    "meta-not-json": lambda f, _: (f / "meta.json").write_text("{"),
    "missing-meta": lambda f, _: (f / "meta.json").unlink(),
    "old-format-meta": lambda f, _: (f / "meta.json").write_text('{"num_classes": 10}'),
    "object-npy": lambda f, marker: np.save(f / "train_x.npy", evil_array(marker), allow_pickle=True),
    "pickle-as-npy": lambda f, marker: (f / "test_x.npy").write_bytes(pickle.dumps(Plant(marker))),
}
REASONS = {
    "truncated-npy": "train_x.npy is unreadable",
    "missing-array": "test_y.npy is missing",
    "flipped-byte": "train_y.npy does not match its checksum",
    "labels-200": "train_y.npy does not match its checksum",
    "edited-meta": "meta.json does not match its checksum",
    "meta-not-json": "meta.json is unreadable",
    "missing-meta": "meta.json is missing",
    "old-format-meta": "meta.json is in another format",
    "object-npy": "train_x.npy is unreadable (holds pickled Python objects, which are never loaded)",
    "pickle-as-npy": "test_x.npy is unreadable (holds pickled Python objects, which are never loaded)",
}


@pytest.mark.e2e
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_is_detected_and_rebuilt(damage, cifar_jpegs, private_cache, tmp_path, capsys):
    cfg = DataConfig(name="imagefolder", root=str(cifar_jpegs))
    decoded = load_dataset(cfg)
    folder = _cache_folder(private_cache, "imagefolder", cifar_jpegs)
    marker = tmp_path / "pwned"
    DAMAGE[damage](folder, marker)
    _load.cache_clear()
    rebuilt = load_dataset(cfg)
    err = capsys.readouterr().err
    assert err.startswith(f"fl-ee: warning: {folder}: {REASONS[damage]}"), err
    assert err.endswith("; decoding imagefolder again\n") and err.count("\n") == 1
    assert not marker.exists()  # a planted pickle never runs
    for a in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(rebuilt, a), getattr(decoded, a))
    assert rebuilt.num_classes == decoded.num_classes == 10
    _load.cache_clear()
    again = load_dataset(cfg)  # read back from the rebuilt cache, silently
    assert capsys.readouterr().err == "" and torch.equal(again.train_x, decoded.train_x)
    assert [p.name for p in private_cache.iterdir()] == [folder.name]  # nothing left over


def test_planted_pickle_would_run_if_unpickled(tmp_path):
    # the control for the tests above: the planted arrays do run code when numpy may unpickle
    marker = tmp_path / "pwned"
    np.save(tmp_path / "evil.npy", evil_array(marker), allow_pickle=True)
    np.load(tmp_path / "evil.npy", allow_pickle=True)
    assert marker.exists()


@pytest.mark.e2e  # decodes Fashion-MNIST's 70,000 images twice (~2 s)
def test_real_fashion_mnist_cache_is_verified_and_rebuilt_identically(shared_data, private_cache, capsys):
    cfg = DataConfig(name="fashion-mnist", root=str(shared_data))
    decoded = load_dataset(cfg)
    folder = _cache_folder(private_cache, "fashion-mnist", shared_data)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["arrays"]["train_x"]["shape"] == [60000, 1, 28, 28] and meta["arrays"]["train_x"]["dtype"] == "<f4"
    _load.cache_clear()
    cached = load_dataset(cfg)
    assert all(torch.equal(getattr(cached, a), getattr(decoded, a)) for a in ("train_x", "train_y", "test_x", "test_y"))
    os.truncate(folder / "train_x.npy", 1000)
    _load.cache_clear()
    rebuilt = load_dataset(cfg)
    assert "train_x.npy is unreadable" in capsys.readouterr().err
    assert torch.equal(rebuilt.train_x, decoded.train_x)


# --- 4-5: the split cache -------------------------------------------------------------

LABELS = np.repeat(np.arange(10), 60)


def _split_file(cache):
    (path,) = cache.glob("splits-*.npz")
    return path


def _savez(path, **arrays):
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


def _stored(path):
    with np.load(path) as stored:
        return {k: stored[k] for k in stored.files}


SPLIT_DAMAGE = {
    "truncated": lambda p, _: os.truncate(p, p.stat().st_size // 2),
    "edited-indices": lambda p, _: _savez(p, **{**_stored(p), "train0": _stored(p)["train0"][::-1].copy()}),
    "missing-client": lambda p, _: _savez(p, **{k: v for k, v in _stored(p).items() if k != "test3"}),
    "no-checksum": lambda p, _: _savez(p, **{k: v for k, v in _stored(p).items() if k != "checksum"}),
    "object-array": lambda p, marker: _savez(p, **{**_stored(p), "train0": evil_array(marker)}),
    "pickle": lambda p, marker: p.write_bytes(pickle.dumps(Plant(marker))),
}
SPLIT_REASONS = {
    "truncated": "unreadable",
    "edited-indices": "does not match its checksum",
    "missing-client": "holds other arrays than the 4 clients' splits",
    "no-checksum": "holds other arrays than the 4 clients' splits",
    "object-array": "unreadable (holds pickled Python objects, which are never loaded)",
    "pickle": "unreadable (holds pickled Python objects, which are never loaded)",
}


@pytest.mark.e2e
@pytest.mark.parametrize("damage", SPLIT_DAMAGE)
def test_a_damaged_split_cache_is_detected_and_recomputed(damage, private_cache, tmp_path, capsys):
    fresh = client_splits(LABELS, 4, "dirichlet", 0.5, 2, 0.25, 0)
    path = _split_file(private_cache)
    marker = tmp_path / "pwned"
    SPLIT_DAMAGE[damage](path, marker)
    _cached_splits.cache_clear()
    again = client_splits(LABELS, 4, "dirichlet", 0.5, 2, 0.25, 0)
    err = capsys.readouterr().err
    assert err.startswith(f"fl-ee: warning: {path}: {SPLIT_REASONS[damage]}") and err.count("\n") == 1, err
    assert err.endswith("; computing the splits again\n")
    assert not marker.exists()
    assert all(np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test) for a, b in zip(fresh, again))
    _cached_splits.cache_clear()
    client_splits(LABELS, 4, "dirichlet", 0.5, 2, 0.25, 0)  # the rewritten file reads back silently
    assert capsys.readouterr().err == "" and _split_file(private_cache) == path


def test_split_cache_reads_back_the_same_splits(private_cache):
    fresh = client_splits(LABELS, 5, "shards", 0.5, 2, 0.2, 3)
    _cached_splits.cache_clear()
    cached = client_splits(LABELS, 5, "shards", 0.5, 2, 0.2, 3)
    assert fresh is not cached
    assert all(np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test) for a, b in zip(fresh, cached))
    assert all(s.train.dtype == np.int64 for s in cached)
