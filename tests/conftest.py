"""Shared fixtures: the offline datasets, what several modules read once made a session (real CIFAR-10
JPEGs, a tiny run), and the test process's garbage collection."""

import gc
import os
import subprocess
from pathlib import Path

import pytest

# No test talks to the internet: Flower's telemetry and Ray's usage statistics stay off in every
# process the tests start (Flower's own CLI included, which never imports fl-ee).
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Python's cycle collector walks every tracked object at each full collection: after the imports (torch,
# Flower, Ray, hypothesis) some 300,000, again and again (2 of collection's 7 CPU seconds). Here it collects
# young objects less often, and never walks what collection made (modules, test functions) again.
gc.set_threshold(10_000, 10, 10)


def pytest_collection_finish(session):
    """What collection made lives all session: out of the cycle collector's sight from now on."""
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def cores_shared_by_workers():
    """Under xdist, each worker's torch takes its share of the cores, not all of them (oversubscribed, the
    workers' threads contend for the cores: the fast subset took 45.6 s against 42.1 s in one measurement)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Each test session caches datasets and splits in its own folder (subprocesses inherit it)."""
    os.environ["FL_EE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def shared_data() -> Path:
    """The folder of real datasets in torchvision's layout, when this checkout has one beside it."""
    if not (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"no offline datasets at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cifar10_sample(tmp_path_factory) -> Path:
    """Three real CIFAR-10 JPEGs per class and split in the imagefolder layout (``{train,test}/<class>/``),
    extracted once a session by GNU tar (0.5 s; Python's tarfile walks the 60,000 members in 4 s).
    Shared: copy it before damaging it."""
    archive = SHARED_DATA / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"no offline datasets at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("jpegs")
    subprocess.run(["tar", "xzf", str(archive), "-C", str(out), "--wildcards", "*/000[012].jpg"], check=True)
    return out / "cifar10"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``inprocess.TINY`` run once a session, its 6 clients taking turns on 3 nodes: (grid, summary, run dir).

    Shared: read it, copy it before changing it.
    """
    from inprocess import TINY, run_inprocess

    out = tmp_path_factory.mktemp("tiny") / "run"
    grid, summary = run_inprocess(out, TINY, nodes=3)
    return grid, summary, out


@pytest.fixture
def task_identity():
    """Messages are built inside a Flower task; give this process one, as the simulation does."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
