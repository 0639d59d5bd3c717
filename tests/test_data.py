import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fl_ee.core.atomic import read_npz
from fl_ee.core.config import DataConfig, load_config
from fl_ee.core.errors import UserError
from fl_ee.data.datasets import _pickle_files, load_dataset
from fl_ee.data.sources import PICKLE_FILES, SOURCE_DIRS, source_key
from fl_ee.federation.preflight import preflight

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "first-simulation.md"


def test_digits_is_offline_and_normalised():
    data = load_dataset(DataConfig(name="digits"))
    assert data.train_x.shape == (1347, 1, 8, 8) and data.test_x.shape == (450, 1, 8, 8)
    assert data.num_classes == 10
    assert abs(float(data.train_x.mean())) < 1e-4 and abs(float(data.train_x.std()) - 1) < 1e-3
    # the standard strides: with C's stride of 1 torch would take the images for channels-last and convolve
    # them with another kernel, rounding otherwise (the quick start ended at 91.9% instead of 92.4%)
    assert data.train_x.stride() == (64, 64, 8, 1) and data.test_x.stride() == (64, 64, 8, 1)
    assert load_dataset(DataConfig(name="digits")) is data  # decoded once per process


def test_digits_are_read_back_from_the_cache_without_scikit_learn(tmp_path, monkeypatch):
    from fl_ee.data import datasets

    monkeypatch.setenv("FL_EE_CACHE", str(tmp_path))
    datasets._load.cache_clear()
    decoded = load_dataset(DataConfig(name="digits"))
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == ["digits"]

    def no_decoding():
        raise AssertionError("decoded again")

    monkeypatch.setattr(datasets, "_digits", no_decoding)  # what a second process finds: the cache, not sklearn
    datasets._load.cache_clear()
    cached = load_dataset(DataConfig(name="digits"))
    assert all(torch.equal(getattr(cached, a), getattr(decoded, a)) for a in datasets.ARRAYS)
    assert all(getattr(cached, a).stride() == getattr(decoded, a).stride() for a in datasets.ARRAYS)
    datasets._load.cache_clear()


@pytest.mark.e2e  # decodes 70,000 images each (~1.5 s)
@pytest.mark.parametrize(("name", "classes"), [("mnist", 10), ("fashion-mnist", 10)])
def test_torchvision_datasets_from_local_files(shared_data, name, classes):
    data = load_dataset(DataConfig(name=name, root=str(shared_data)))
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.num_classes == classes
    assert data.train_x.stride() == (784, 784, 28, 1)  # not taken for channels-last (see the digits' test)
    assert torch.unique(data.train_y).tolist() == list(range(classes))


def test_missing_torchvision_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no copy in ./data or ../shared/data
    with pytest.raises(UserError) as info:
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)))
    assert info.value.key == "data.root"
    assert str(info.value) == (
        f"data.root: fashion-mnist not found under '{tmp_path}' (no FashionMNIST/raw/train-images-idx3-ubyte); add "
        f"--set data.root=DIR for the folder DIR that holds FashionMNIST/raw/, or --set data.download=true to "
        f"download it")


def test_a_preset_without_its_data_names_the_set_that_finds_the_readmes_copy(tmp_path, monkeypatch):
    raw = tmp_path / "shared" / "data" / "FashionMNIST" / "raw"  # the README's ../shared/data, beside the clone
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).touch()
    (tmp_path / "clone").mkdir()
    monkeypatch.chdir(tmp_path / "clone")
    with pytest.raises(UserError) as info:
        preflight(load_config("fmnist-3tiers"))  # as shipped: data.root = "data"
    assert str(info.value) == (
        f"data.root: fashion-mnist not found under '{tmp_path / 'clone' / 'data'}' (no "
        f"FashionMNIST/raw/train-images-idx3-ubyte); it is in ../shared/data: add --set data.root=../shared/data")


def test_a_missing_cifar10_image_folder_gives_the_readmes_extraction_command(tmp_path, monkeypatch):
    (tmp_path / "clone").mkdir()
    monkeypatch.chdir(tmp_path / "clone")
    root = tmp_path / "elsewhere" / "cifar10"
    other = "add --set data.root=DIR for the folder DIR that holds train/<class>/ and test/<class>/ images"
    start = f"data.root: imagefolder needs {root}/train/<class>/<image> files; {root}/train is not a folder; "
    for without_archive in (True, False):
        with pytest.raises(UserError) as info:
            load_dataset(DataConfig(name="imagefolder", root=str(root)))
        if without_archive:  # outside this project: torchvision's download is the way
            assert str(info.value) == (f"{start}{other}, or --set data.name=cifar10 --set data.download=true to "
                                       f"download torchvision's copy")
            (tmp_path / "shared" / "data").mkdir(parents=True)
            (tmp_path / "shared" / "data" / "cifar10-jpeg.tar.gz").touch()
        else:
            archive = "../shared/data/cifar10-jpeg.tar.gz"
            assert str(info.value) == (f"{start}extract {archive} there (mkdir -p {root.parent} && tar xzf {archive} "
                                       f"-C {root.parent}), or {other}")
    shipped = load_config("cifar10-resnet").data.root  # the first-simulation guide's command makes the preset's folder
    assert shipped == "/tmp/data/cifar10"
    assert f"\nmkdir -p /tmp/data && tar xzf {archive} -C /tmp/data\n" in GUIDE.read_text()


@pytest.mark.e2e
def test_imagefolder_reads_real_cifar10_jpegs(cifar10_sample):
    data = load_dataset(DataConfig(name="imagefolder", root=str(cifar10_sample)))
    assert data.train_x.shape == (30, 3, 32, 32) and data.test_x.shape == (30, 3, 32, 32)
    assert data.num_classes == 10 and torch.bincount(data.train_y).tolist() == [3] * 10


def _write_images(root, split, sizes):
    for cls, size in sizes.items():
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.fromarray(np.full((*size, 3), 40 * i + 10, dtype=np.uint8)).save(root / split / cls / f"{i}.png")


def test_imagefolder_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "none")))
    _write_images(tmp_path, "train", {"a": (4, 4), "b": (5, 5)})
    _write_images(tmp_path, "test", {"a": (4, 4), "b": (4, 4)})
    with pytest.raises(UserError, match="differ in size"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_decoded_datasets_are_cached_and_keyed_by_their_files(tmp_path, monkeypatch):
    from fl_ee.data.datasets import _load

    monkeypatch.setenv("FL_EE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "images"
    _write_images(root, "train", {"a": (4, 4), "b": (4, 4)})
    _write_images(root, "test", {"a": (4, 4), "b": (4, 4)})
    cfg = DataConfig(name="imagefolder", root=str(root))
    _load.cache_clear()
    decoded = load_dataset(cfg)
    cached = sorted((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and {p.name for p in cached[0].iterdir()} >= {"train_x.npy", "meta.json"}
    _load.cache_clear()
    again = load_dataset(cfg)  # read back from the cache
    assert torch.equal(again.train_x, decoded.train_x) and torch.equal(again.test_y, decoded.test_y)
    Image.fromarray(np.full((4, 4, 3), 200, dtype=np.uint8)).save(root / "train" / "a" / "0.png")  # data changed
    _load.cache_clear()
    changed = load_dataset(cfg)
    assert len(list((tmp_path / "cache").iterdir())) == 2 and not torch.equal(changed.train_x, decoded.train_x)
    _load.cache_clear()


def test_calibration_samples_are_held_out_of_training_deterministically():
    from fl_ee.core.config import config_from_dict
    from fl_ee.data.datasets import calibration_size, client_calibration, client_data, run_splits

    cases = [(50, 0.0), (50, 0.1), (3, 0.01), (1, 0.5), (10, 0.99)]
    assert [calibration_size(n, f) for n, f in cases] == [0, 5, 1, 0, 9]
    cfg = config_from_dict({"exit_policy": {"calibration_fraction": 0.2}})
    x, y, _, _ = client_data(cfg, 1)
    cx, cy = client_calibration(cfg, 1)
    everything = load_dataset(cfg.data).train_x[torch.from_numpy(run_splits(cfg)[1].train)]
    assert len(y) + len(cy) == len(everything) and len(cy) == round(0.2 * len(everything))
    def fingerprints(images):  # one number per image, sorted
        return torch.sort(images.flatten(1).double() @ torch.arange(images[0].numel(), dtype=torch.float64)).values

    assert torch.allclose(fingerprints(torch.cat([x, cx])), fingerprints(everything))  # disjoint and complete
    assert torch.equal(client_calibration(cfg, 1)[0], cx)
    off = config_from_dict({"exit_policy": {"calibration_fraction": 0.0}})
    assert torch.equal(client_data(off, 1)[0], everything) and torch.equal(client_calibration(off, 1)[0], everything)


def _cifar100_fixture(root, monkeypatch, publish=True, batches=None):
    """A tiny CIFAR-100 in torchvision's pickle layout (cifar-100-python/{train,test,meta}).

    ``batches`` maps ``train`` and ``test`` to (uint8 images N x 3 x 32 x 32, labels); by
    default three train and two test images of known colours. With ``publish``,
    torchvision's list of published md5s names these files, as it names the real ones;
    otherwise they are any copy, which fl-ee refuses to unpickle.
    """
    import hashlib
    import pickle

    from torchvision.datasets import CIFAR100

    folder = root / CIFAR100.base_folder
    folder.mkdir(parents=True)
    if batches is None:
        images = np.zeros((3, 3, 32, 32), dtype=np.uint8)
        images[0, 0] = 255  # sample 0: red; sample 1: black; sample 2: blue
        images[2, 2] = 255
        batches = {"train": (images, [7, 99, 0]), "test": (images[:2], [1, 2])}
    for name, (x, y) in batches.items():
        (folder / name).write_bytes(pickle.dumps({"data": x.reshape(len(x), -1), "fine_labels": y,
                                                  "coarse_labels": [0] * len(y)}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class{i}" for i in range(100)]}))
    if publish:
        md5 = {f: hashlib.md5((folder / f).read_bytes()).hexdigest() for f in ("train", "test", "meta")}
        monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
        monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
        monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5["meta"]})


def test_cifar100_is_read_by_torchvision_from_its_pickles(tmp_path, monkeypatch):
    _cifar100_fixture(tmp_path, monkeypatch)
    data = load_dataset(DataConfig(name="cifar100", root=str(tmp_path)))
    assert data.num_classes == 100 and data.train_x.shape == (3, 3, 32, 32) and data.test_x.shape == (2, 3, 32, 32)
    assert data.train_y.tolist() == [7, 99, 0] and data.test_y.tolist() == [1, 2]
    red, black, blue = data.train_x[:, :, 0, 0]  # channels in NCHW order, standardised per channel
    assert red[0] > black[0] == blue[0] and blue[2] > black[2] == red[2] and red[1] == black[1] == blue[1]


@pytest.mark.e2e
def test_the_cifar100_preset_trains_and_evaluates_100_classes_from_torchvisions_layout(tmp_path, monkeypatch):
    from inprocess import run_inprocess

    pixels = np.random.default_rng(0).integers(0, 256, (240, 3, 32, 32), dtype=np.uint8)
    labels = [i % 100 for i in range(240)]
    _cifar100_fixture(tmp_path, monkeypatch, batches={"train": (pixels[:200], labels[:200]),
                                                      "test": (pixels[200:], labels[:40])})
    small = [f"data.root={tmp_path}", "rounds=1", "eval_every=1", "data.num_clients=4", "data.partitioner=iid",
             "model.width=4"]
    _, summary = run_inprocess(tmp_path / "run", small, "cifar100-resnet")
    head = read_npz(tmp_path / "run" / "checkpoint" / "round-000001" / "arrays.npz")
    assert [a.shape[0] for k, a in head.items() if k.startswith("exits.") and a.ndim == 2] == [100] * 4  # classifiers
    assert len(summary["accuracy"]["global"]["by_exit"]) == 4 and summary["clients"]["total"] == 4
    assert 0 <= summary["accuracy"]["personalised"]["mean"] <= 1


def test_cifar100_files_that_are_not_the_published_ones_are_never_unpickled(tmp_path, monkeypatch):
    _cifar100_fixture(tmp_path, monkeypatch, publish=False)
    with pytest.raises(UserError, match="train: corrupted: its md5 is not that of the published CIFAR-100 file"):
        load_dataset(DataConfig(name="cifar100", root=str(tmp_path)))
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(UserError, match="cifar100 not found under .* \\(no cifar-100-python/test\\)"):
        load_dataset(DataConfig(name="cifar100", root=str(tmp_path)))


def test_the_source_digest_lists_files_as_rglob_finds_them_in_path_order(tmp_path):
    files = {"train/a-b/1.jpg": "1", "train/a/2.jpg": "22", "train/a/x/.3": "333", "test/z/4": "4444"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    os.symlink(tmp_path / "train/a", tmp_path / "train/b")  # a link to a folder: not followed
    os.symlink(tmp_path / "train/a/2.jpg", tmp_path / "train/c")  # a link to a file: its target's size
    os.symlink(tmp_path / "nowhere", tmp_path / "train/d")  # a broken link: passed over
    mtime = {name: (tmp_path / name).stat().st_mtime_ns for name in files}
    # by path parts: train/a/... before train/a-b/... ('a' < 'a-b'), though '/' > '-' as text
    entries = [f"train/a/2.jpg:2:{mtime['train/a/2.jpg']}", f"train/a/x/.3:3:{mtime['train/a/x/.3']}",
               f"train/a-b/1.jpg:1:{mtime['train/a-b/1.jpg']}", f"train/c:2:{mtime['train/a/2.jpg']}",
               f"test/z/4:4:{mtime['test/z/4']}"]
    digest = hashlib.sha1(json.dumps(["imagefolder", str(tmp_path), entries]).encode()).hexdigest()[:16]
    assert source_key("imagefolder", str(tmp_path)) == f"imagefolder-{digest}"
    assert source_key("cifar10", str(tmp_path)) is None  # no cifar-10-batches-py/


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_the_cifar_files_checked_without_torchvision_are_those_torchvision_reads(name):
    folder, files = _pickle_files(name)  # from torchvision's own class
    assert (SOURCE_DIRS[name][0], PICKLE_FILES[name]) == (str(folder), tuple(f for f, _ in files))
