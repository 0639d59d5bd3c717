"""Where a client trains and evaluates: its GPU share when it has one and CUDA is there, else the CPU."""

from __future__ import annotations

import torch


def client_device(client_gpus: float, cuda_available: bool | None = None) -> torch.device:
    """``cuda`` (the GPU Ray assigned to this worker) when ``client_gpus > 0`` and CUDA is available."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    return torch.device("cuda" if client_gpus > 0 and cuda_available else "cpu")
