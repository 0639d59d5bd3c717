"""Clients on a GPU: with ``simulation.client_gpus > 0`` and CUDA there, the real ClientApp trains and evaluates on it
(and the server evaluates the global model on it).

Runs only where CUDA is (skipped elsewhere, CI included): the in-process grid calls the real ClientApp
in this process, so the CUDA memory it used is measured here. Each setting runs twice, on the GPU and on
the CPU, from the same seed; their results differ only by the kernels' rounding (cuDNN's convolutions
sum in another order), so they agree to a tolerance, not bit for bit.
"""

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from flwr.app import ArrayRecord

from fl_ee.data.datasets import TensorDataset
from fl_ee.federation.globaleval import evaluate_global
from fl_ee.models import EarlyExitNet, ModelSpec
from inprocess import TINY, run_inprocess

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("task_identity"),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SETTINGS = {
    "cnn": [],
    # the knobs of issue 22 on the GPU: FedDyn's client state, mutual distillation, weight decay, clipping, a schedule
    "feddyn-kd": ["strategy.name=feddyn", "training.distillation=mutual", "training.kd_warmup_rounds=0",
                  "training.weight_decay=0.001", "training.clip_norm=5.0", "training.lr_schedule=exp",
                  "training.lr_decay=0.99"],
    # the CIFAR presets' network on the digits: a ResNet with batch norm, conv heads and crop-and-flip on the GPU
    "resnet-augment": ["model.backbone=resnet", "model.layers=[1,1,1,1]", "model.width=4", "model.norm=batch",
                       "model.exit_head=conv", "data.augment=true"],
}


def _accuracies(summary: dict) -> list[float]:
    accuracy = summary["accuracy"]
    return [*accuracy["global"]["by_exit"].values(), accuracy["personalised"]["mean"]]


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_clients_train_on_the_gpu_and_match_the_cpu(setting, tmp_path):
    overrides = [*TINY, *SETTINGS[setting]]
    before = torch.cuda.memory_allocated()  # an earlier run's submodels may still be cached on the GPU
    torch.cuda.reset_peak_memory_stats()
    _, on_cpu = run_inprocess(tmp_path / "cpu", overrides)
    assert torch.cuda.max_memory_allocated() <= before  # without a GPU share nothing new goes to the GPU
    _, on_gpu = run_inprocess(tmp_path / "gpu", [*overrides, "simulation.client_gpus=0.5"])
    assert torch.cuda.max_memory_allocated() > before  # with one the clients' tensors live on it
    gpu, cpu = _accuracies(on_gpu), _accuracies(on_cpu)
    assert all(math.isfinite(a) for a in gpu) and len(gpu) == len(cpu)
    assert max(abs(g - c) for g, c in zip(gpu, cpu, strict=True)) <= 0.05, (gpu, cpu)


def test_the_server_evaluates_the_global_model_on_the_gpu_as_on_the_cpu():
    torch.manual_seed(0)
    model = EarlyExitNet(ModelSpec(1, 8, 8, 10))
    x, y = torch.randn(3000, 1, 8, 8), torch.randint(0, 10, (3000,))
    data, arrays = TensorDataset("random", x[:1], y[:1], x, y, 10), ArrayRecord(model.state_dict())
    with ThreadPoolExecutor(2) as pool:
        on_cpu = evaluate_global(arrays, data, model, 4, pool)()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        on_gpu = evaluate_global(arrays, data, model, 4, pool, device=torch.device("cuda"))()
    assert torch.cuda.max_memory_allocated() > before
    for key in ("by_exit", "modal_share"):
        assert on_gpu[key].keys() == on_cpu[key].keys()
        assert all(abs(on_gpu[key][k] - on_cpu[key][k]) <= 0.01 for k in on_cpu[key]), (on_gpu, on_cpu)
    assert abs(on_gpu["ensemble"] - on_cpu["ensemble"]) <= 0.01
