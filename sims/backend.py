"""The Ray backend: client resources and the cluster, checked before anything starts.

:func:`check_backend` refuses, before a run directory exists, client resources Ray
cannot host and a cluster that cannot be reached (a TCP probe of ``host:port`` first,
so an unreachable address fails in seconds instead of Ray's retry loop). Ray (and torch, to
count GPUs) is imported only where needed: a local check of one CPU and no GPU per client
imports neither, so a warm ``fl-ee check`` stays under a second.
"""

from __future__ import annotations

import glob
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from fl_ee.core.config import Config
from fl_ee.core.errors import UserError
from sims import reaper

PROBE_TIMEOUT_S = 5.0  # TCP connect to a cluster's address before ray.init


def backend_config(cfg: Config) -> dict[str, Any]:
    """Ray backend settings: per-client CPU/GPU shares, a quiet Ray, and the cluster to use."""
    init_args: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if cfg.simulation.ray_address:  # attach to a running cluster instead of starting one
        init_args["address"] = cfg.simulation.ray_address
    return {
        "client_resources": {"num_cpus": cfg.simulation.client_cpus, "num_gpus": cfg.simulation.client_gpus},
        "init_args": init_args,
    }


# ------------------------------------------------------------------- before the run starts


def local_cpus() -> float:
    """The CPUs a Ray started on this machine would get (cgroup limits included, as ``ray.init`` counts them)."""
    from ray._private.utils import get_num_cpus

    return float(get_num_cpus())


def local_gpus() -> float:
    """The GPUs torch sees; none, without importing torch, on a Linux with no NVIDIA or AMD device file."""
    if sys.platform == "linux" and not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/kfd"):
        return 0.0
    import torch

    return float(torch.cuda.device_count())


def check_fit(cfg: Config, nodes: Iterable[dict[str, Any]], where: str) -> None:
    """Refuse client resources that no node in ``nodes`` (Ray resource dicts) can host once.

    Flower sizes its actor pool per node (``pool_size_from_resources``); with no node
    able to host one client it crashes with an empty pool, so the same rule applies here.
    """
    nodes = [n for n in nodes if n]
    cpus, gpus = cfg.simulation.client_cpus, cfg.simulation.client_gpus
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if cpus > most_cpus:
        raise UserError(f"{cpus:g} CPUs per client, but {where} has {most_cpus:g}; "
                        f"use at most {most_cpus:g}", key="simulation.client_cpus")
    if gpus > 0:
        fitting = [n for n in nodes if n.get("CPU", 0.0) >= cpus]
        most_gpus = max((n.get("GPU", 0.0) for n in fitting), default=0.0)
        if gpus > most_gpus:
            hint = f"use at most {most_gpus:g}" if most_gpus else "set it to 0"
            raise UserError(f"{gpus:g} GPUs per client, but {where} has {most_gpus:g}; {hint}",
                            key="simulation.client_gpus")


def worker_count(cfg: Config) -> int:
    """Clients Flower's Ray backend runs at once: per live node, the client resources it holds.

    Counted as Flower's ``pool_size_from_resources`` counts, without its error for 0 (its
    runtime then crashes on its own; :func:`check_fit` refuses such resources first).
    """
    cpus, gpus = cfg.simulation.client_cpus, cfg.simulation.client_gpus
    total = 0
    import ray

    for node in ray.nodes():
        resources = node.get("Resources") or {}
        fits = int(resources.get("CPU", 0) / cpus)
        total += min(fits, int(resources.get("GPU", 0) / gpus)) if gpus > 0 else fits
    return total


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``[scheme://]host:port`` address, or None when it is not one."""
    address = address.split("://", 1)[-1]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def probe(address: str) -> None:
    """Fail fast, in one line, when nothing listens at the cluster address (Ray itself retries for minutes)."""
    where = _host_port(address)
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise UserError(f"no Ray cluster answers at {address} ({why}); start one with `ray start --head` "
                        "or leave ray_address empty for a local Ray", key="simulation.ray_address") from None


def resolve_address(address: str) -> str:
    """The ``host:port`` Ray would connect to for ``address`` (``auto`` looks for a running cluster)."""
    if address != "auto":
        return address
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except ConnectionError:
        found = None
    if not found:
        raise UserError("auto: no running Ray cluster found on this machine; start one with `ray start --head` "
                        "or give its host:port", key="simulation.ray_address")
    return found


def init_ray(cfg: Config) -> None:
    """``ray.init`` as Flower's ``RayBackend.init_ray`` does it (Flower skips it once Ray is up).

    Without ``simulation.ray_address`` it starts a Ray of its own, even where a cluster
    runs on this machine (``ray.init()`` alone would join the last one ``ray start``
    started), unless ``RAY_ADDRESS`` names one to join. The processes of a Ray started
    here die with this process, also when it is killed (:mod:`sims.reaper`); a cluster it
    joins is left alone. A Ray started here inherits this process's ``PYTHONPATH`` (made
    ``sys.path``), so the workers it starts ahead host the clients (a job ``runtime_env``
    would have it start new ones: the first client call about 1 s later on 2 cores); a
    joined cluster's workers get the path through the job's ``runtime_env``.
    """
    import ray

    args: dict[str, Any] = dict(backend_config(cfg)["init_args"])
    joins = "address" in args or bool(os.environ.get("RAY_ADDRESS"))
    if "address" not in args:
        reaper.arm()
        if not joins:  # RAY_ADDRESS, Ray's own variable, joins the cluster it names, by the user's choice;
            args["address"] = "local"  # never the one a `ray start` left in Ray's current-cluster file
    args.setdefault("include_dashboard", False)
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath  # a Ray started here, and so its workers, inherit it
    if joins:  # a cluster's workers get it from the job
        args["runtime_env"] = {"env_vars": {"PYTHONPATH": pythonpath}}
    ray.init(**args)
    node: Any = ray._private.worker._global_node
    if node.head:  # not when ray.init found a cluster to join (`ray start`, RAY_ADDRESS)
        reaper.watch(node.get_session_dir_path())


def start_ray(cfg: Config) -> Callable[[], None]:
    """Start a local Ray in the background; returns the wait for it (which re-raises its error).

    Ray takes seconds to start its processes; they come up while the caller goes on
    (``fl-ee run``: after the preflight, while Flower and the apps are imported and the
    run directory is made). A cluster (``simulation.ray_address``) was joined by
    :func:`check_backend`: nothing is started then. The thread outlives the start: Ray's
    processes are bound to the thread that started them (``PR_SET_PDEATHSIG``), so it
    waits, a daemon, for the process to end.
    """
    errors: list[BaseException] = []
    ready = threading.Event()

    def start() -> None:
        import ray

        try:
            if not ray.is_initialized():
                init_ray(cfg)
        except BaseException as exc:  # re-raised by the wait, in the caller's thread
            errors.append(exc)
        finally:
            ready.set()
        threading.Event().wait()

    threading.Thread(target=start, name="fl-ee-ray", daemon=True).start()

    def wait() -> None:
        ready.wait()
        if errors:
            raise errors[0]

    return wait


def check_backend(cfg: Config) -> None:
    """Before the run directory exists: refuse what would make Ray crash or wait forever.

    Local Ray: the client resources are compared with this machine's CPUs and GPUs.
    A cluster (``simulation.ray_address``): its address is probed, the driver connects
    (the simulation then reuses the connection) and the resources are compared with
    the cluster's nodes. Raises :class:`UserError` naming the key.
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence Ray's FutureWarning
    address = cfg.simulation.ray_address
    if not address:  # Ray counts at least one CPU on any machine; GPUs are counted only when asked for
        sim = cfg.simulation
        here = {"CPU": local_cpus() if sim.client_cpus > 1 else 1.0, "GPU": local_gpus() if sim.client_gpus else 0.0}
        check_fit(cfg, [here], "this machine")
        return

    import ray

    probe(resolve_address(address))
    if not ray.is_initialized():
        try:
            init_ray(cfg)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot attach to the Ray cluster at {address}: {exc}",
                            key="simulation.ray_address") from None
    try:
        check_fit(cfg, [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")],
                  f"no node of the Ray cluster at {address}: the largest")
    except UserError:
        ray.shutdown()
        raise
