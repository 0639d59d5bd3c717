"""benchmarks/vmap_clients.py: the vectorised clients it times train as the sequential ones do."""

from __future__ import annotations

import pytest
import torch

from benchmarks.vmap_clients import compare
from fl_ee.core.config import config_from_dict
from fl_ee.data.datasets import load_dataset
from fl_ee.federation.server import initial_model


@pytest.mark.e2e
def test_vmap_and_sequential_sgd_end_at_the_same_weights(shared_data):
    torch.set_num_threads(1)
    cfg = config_from_dict({"data": {"name": "fashion-mnist", "root": str(shared_data)}})
    dataset = load_dataset(cfg.data)
    net = initial_model(cfg, dataset)
    before = [p.detach().clone() for p in net.parameters()]
    row = compare(net, dataset.train_x, dataset.train_y, clients=3, batch=4, steps=2, device=torch.device("cpu"))
    assert (row["clients"], row["batch"]) == (3, 4)
    assert 0 < row["max_abs_diff"] < 1e-4  # float rounding only: batched convolutions sum in another order
    assert row["sequential_s_per_step"] > 0 and row["ratio"] > 0
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))  # the network it was given is unchanged
