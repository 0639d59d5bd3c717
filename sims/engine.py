"""The engine: Flower's simulation runtime on the Ray backend, configured from the run config.

Nothing here may hang. :func:`simulate` runs the apps so that a crash anywhere
(ServerApp thread, Flower's runtime, Ray) ends the run with an exception, also when the
ServerApp thread is still waiting for replies that will never come (its grid stops
answering: :mod:`sims.stopping`), and so that one signal stops the run cleanly. A Ray
worker that dies costs the message it held and is replaced (:mod:`sims.workers`); a Ray
that dies under the run takes the process with it, and the watchdog says so in one line
(:func:`sims.reaper.running`). The backend is checked first by :func:`sims.backend.check_backend`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fl_ee.core.config import Config
from fl_ee.results.rundir import ROUNDS
from fl_ee.wire.exchange import NODES_PER_WORKER
from sims import reaper
from sims.backend import (
    backend_config,
    check_backend,
    init_ray,
    start_ray,
    worker_count,
)
from sims.stopping import Interrupted, Stopper, kill_children, ray_lost_line, stoppable
from sims.workers import healing_backend

__all__ = ["Interrupted", "check_backend", "simulate", "start_ray"]


_FLOWER_WRAPPERS = ("An error was encountered. Ending simulation.", "Simulation Runtime crashed.")


def _root_cause(exc: BaseException) -> BaseException:
    """The exception under Flower's generic wrappers ("Simulation Runtime crashed."), else ``exc``."""
    while isinstance(exc, RuntimeError) and str(exc) in _FLOWER_WRAPPERS and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


class _Quiet(logging.Filter):
    """Hide Flower's deprecation notice of ``run_simulation`` and its runtime's crash tracebacks.

    :func:`simulate` raises the root cause of a crash instead of the tracebacks.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.funcName in ("run_api", "_main_loop") and record.levelno >= logging.WARNING:
            return False
        return "run_simulation" not in record.getMessage()


def pool_size(cfg: Config) -> int:
    """Simulated nodes: enough to keep each of Flower's Ray workers busy, never more than the clients.

    Any node acts as any client (:mod:`fl_ee.wire.exchange`), so the cost of Flower's runtime
    (which checks every node for messages every 0.1 s) follows the workers, not the
    registered clients.
    """
    return min(cfg.data.num_clients, NODES_PER_WORKER * max(1, worker_count(cfg)))


def simulate(
    server_app: ServerApp,
    client_app: ClientApp,
    cfg: Config,
    run_dir: Path | None = None,
    on_interrupt: Callable[[], object] | None = None,
    ray_started: Callable[[], None] | None = None,
) -> None:
    """Run the apps on a pool of simulated nodes (:func:`pool_size`); returns when the ServerApp ends.

    Raises :class:`Interrupted` when SIGINT or SIGTERM stopped the run (``run_dir``
    names the rounds kept; ``on_interrupt`` runs first, also on the hard way out), and
    ``RuntimeError`` whose ``__cause__`` is the root cause when Flower's runtime or Ray
    crashed. ``ray_started`` waits for a Ray started in the background (:func:`sims.backend.start_ray`).
    Meanwhile this process's torch runs each operation on one thread: the server's own
    evaluation runs its slices side by side (:mod:`fl_ee.federation.globaleval`).
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence Ray's FutureWarning
    flwr_logger = logging.getLogger("flwr")
    level, quiet = flwr_logger.level, _Quiet()
    flwr_logger.setLevel(logging.WARNING)
    flwr_logger.addFilter(quiet)
    stopper = Stopper(run_dir, on_interrupt)
    stopper.install()
    threads = torch.get_num_threads()
    try:
        import ray

        if ray_started is not None:
            ray_started()
        if not ray.is_initialized():  # Flower would start it the same way; started here to take SIGTERM back
            init_ray(cfg)
        node: Any = ray._private.worker._global_node
        if run_dir is not None and node is not None:  # should Ray end this process, the watchdog says so
            reaper.arm()
            reaper.running(ray_lost_line(Path(run_dir)), Path(run_dir) / ROUNDS, node.get_session_dir_path())
        torch.set_num_threads(1)  # the server's evaluation runs a slice per core instead (fl_ee.federation.globaleval)
        stopper.install()
        with healing_backend():  # a Ray worker that dies is replaced (sims.workers)
            run_simulation(
                server_app=stoppable(server_app, stopper.stop),
                client_app=client_app,
                num_supernodes=pool_size(cfg),
                backend_config=backend_config(cfg),
            )
    except BaseException as exc:
        stopper.stop.set()  # a ServerApp thread still waiting for replies gives up
        if stopper.signum is not None:
            kill_children(stopper.ours)
            raise Interrupted(stopper.message(), stopper.signum) from None
        cause = _root_cause(exc)
        if cause is exc:
            raise
        raise RuntimeError(str(cause)) from cause
    finally:
        reaper.finished()
        torch.set_num_threads(threads)
        stopper.restore()
        flwr_logger.removeFilter(quiet)
        flwr_logger.setLevel(level)
    if stopper.signum is not None:
        kill_children(stopper.ours)  # what ray.shutdown() left of our local Ray, if anything
        raise Interrupted(stopper.message(), stopper.signum)
