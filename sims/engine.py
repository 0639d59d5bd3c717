"""The engine: Flower's simulation runtime on the Ray backend, configured from the run config."""

from __future__ import annotations

import logging
import os
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fl_ee.config import Config


def backend_config(cfg: Config) -> dict[str, Any]:
    """Ray backend settings: per-client CPU/GPU shares, a quiet Ray, and the cluster to use."""
    init_args: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if cfg.simulation.ray_address:  # attach to a running cluster instead of starting one
        init_args["address"] = cfg.simulation.ray_address
    return {
        "client_resources": {"num_cpus": cfg.simulation.client_cpus, "num_gpus": cfg.simulation.client_gpus},
        "init_args": init_args,
    }


class _DropDeprecation(logging.Filter):
    """Hide Flower's notice that ``run_simulation`` is deprecated in favour of ``flwr run``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation" not in record.getMessage()


def simulate(server_app: ServerApp, client_app: ClientApp, cfg: Config) -> None:
    """Run the apps with one simulated node per client; returns when the ServerApp ends."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence Ray's FutureWarning
    flwr_logger = logging.getLogger("flwr")
    level, quiet = flwr_logger.level, _DropDeprecation()
    flwr_logger.setLevel(logging.WARNING)
    flwr_logger.addFilter(quiet)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.data.num_clients,
            backend_config=backend_config(cfg),
        )
    finally:
        flwr_logger.removeFilter(quiet)
        flwr_logger.setLevel(level)
