"""The engine: Flower's simulation runtime on the Ray backend, configured from the run config.

Nothing here may hang. :func:`check_backend` refuses, before a run directory exists,
client resources Ray cannot host and a cluster that cannot be reached.
:func:`simulate` runs the apps so that

- a crash anywhere (ServerApp thread, Flower's runtime, Ray) ends the run with an
  exception, also when the ServerApp thread is still waiting for replies that will
  never come (its grid stops answering, see :class:`StoppableGrid`);
- SIGINT or SIGTERM stops the round loop at its next exchange with the clients, lets
  Flower's runtime wind down and shut Ray down, and raises :class:`Interrupted`. Should
  that take longer than :data:`GRACE_S` (a client stuck in a long task, Ray still
  starting) or a second signal come, our Ray processes are killed and the process exits
  with 130 at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fl_ee.config import Config
from fl_ee.errors import UserError

GRACE_S = 3.0  # after a signal, the longest wait for an orderly stop before killing Ray
PROBE_TIMEOUT_S = 5.0  # TCP connect to a cluster's address before ray.init
ROUNDS_FILE = "rounds.jsonl"


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


def local_resources() -> dict[str, float]:
    """The CPUs and GPUs a Ray started on this machine would get."""
    import torch
    from ray._private.utils import get_num_cpus  # what ray.init counts (cgroup limits included)

    return {"CPU": float(get_num_cpus()), "GPU": float(torch.cuda.device_count())}


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
    """``ray.init`` as Flower's ``RayBackend.init_ray`` does it (Flower skips it once Ray is up)."""
    import ray

    args: dict[str, Any] = dict(backend_config(cfg)["init_args"])
    args.setdefault("include_dashboard", False)
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **args)


def check_backend(cfg: Config) -> None:
    """Before the run directory exists: refuse what would make Ray crash or wait forever.

    Local Ray: the client resources are compared with this machine's CPUs and GPUs.
    A cluster (``simulation.ray_address``): its address is probed, the driver connects
    (the simulation then reuses the connection) and the resources are compared with
    the cluster's nodes. Raises :class:`UserError` naming the key.
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence Ray's FutureWarning
    address = cfg.simulation.ray_address
    if not address:
        check_fit(cfg, [local_resources()], "this machine")
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


# ------------------------------------------------------------------------ while it runs


def _leave(line: str) -> NoReturn:
    """Write ``line`` to stderr and exit with 130 without the interpreter's teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if sys.stderr.isatty():
        line = "\x1b[?25h" + line  # a progress bar may have hidden the cursor
    os.write(2, (line + "\n").encode())
    os._exit(130)


class SimulationStopped(BaseException):
    """Raised in the ServerApp thread by :class:`StoppableGrid` once the run is stopping.

    A ``BaseException``, like ``KeyboardInterrupt``: no ``except Exception`` in the round
    loop may take it for a failed round and carry on.
    """


class Interrupted(Exception):
    """The run was stopped by a signal; the message says what was kept and how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    def leave(self) -> NoReturn:
        """Print the message and exit with 130 now.

        Everything is written and Ray is shut down by then; only the interpreter's
        teardown is skipped, where Ray's and torch's native libraries can take seconds.
        """
        _leave(str(self))


class StoppableGrid(Grid):
    """A grid that raises :class:`SimulationStopped` in every exchange once ``stop`` is set.

    ``send_and_receive`` is Flower's ``InMemoryGrid.send_and_receive`` (push, then pull
    every ``pull_interval`` until every reply is in), with the check at each pull, so a
    run behaves exactly as on Flower's grid until it is stopped.
    """

    def __init__(self, grid: Grid, stop: threading.Event) -> None:
        self._grid = grid
        self._stop = stop
        self.pull_interval = float(getattr(grid, "pull_interval", 0.1))

    def _check(self) -> None:
        if self._stop.is_set():
            raise SimulationStopped

    def set_run(self, run: Any) -> None:  # noqa: D102
        self._grid.set_run(run)

    @property
    def run(self) -> Any:  # noqa: D102
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,  # noqa: D102
                       ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        self._check()
        return self._grid.get_node_ids()

    def get_nodes(self) -> Any:  # noqa: D102
        self._check()
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        self._check()
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        self._check()
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push, then pull until every reply is in, ``timeout`` passes or the run stops."""
        msg_ids = set(self.push_messages(messages))
        del messages
        end_time = time.time() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while timeout is None or time.time() < end_time:
            pulled = list(self.pull_messages(msg_ids))
            replies.extend(pulled)
            msg_ids.difference_update({m.metadata.reply_to_message_id for m in pulled})
            if not msg_ids:
                break
            time.sleep(self.pull_interval)
        return replies


def stoppable(server_app: ServerApp, stop: threading.Event) -> ServerApp:
    """``server_app`` on a :class:`StoppableGrid`; it returns quietly when stopped."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            server_app(StoppableGrid(grid, stop), context)
        except SimulationStopped:
            pass  # the engine says why

    return app


def kept_rounds(run_dir: Path | None) -> int:
    """Finished rounds in the run directory (lines of ``rounds.jsonl``)."""
    if run_dir is None:
        return 0
    try:
        with open(Path(run_dir) / ROUNDS_FILE, "rb") as handle:
            return sum(1 for line in handle if line.endswith(b"\n"))
    except OSError:
        return 0


def interrupted_message(signum: int, run_dir: Path | None) -> str:
    """The one line printed when a signal ends the run."""
    name = signal.Signals(signum).name
    if run_dir is None:
        return f"fl-ee: interrupted ({name})"
    n = kept_rounds(run_dir)
    return (f"fl-ee: interrupted ({name}); {n} finished round{'' if n == 1 else 's'} kept in {run_dir}; "
            f"resume with `fl-ee resume {run_dir}`")


def _processes() -> dict[int, tuple[int, str]]:
    """``pid -> (parent pid, start time)`` of every process, from ``/proc`` (empty where there is none)."""
    table = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ..., starttime (20th)
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def descendants(pid: int) -> set[tuple[int, str]]:
    """``(pid, start time)`` of every live descendant of ``pid``."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add((child, table[child][1]))
            todo.append(child)
    return found


def kill_processes(processes: set[tuple[int, str]]) -> None:
    """SIGKILL each ``(pid, start time)`` still running (the start time guards against a reused pid)."""
    table = _processes()
    for pid, started in processes:
        if pid in table and table[pid][1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def kill_children(known: Iterable[tuple[int, str]] = ()) -> None:
    """SIGKILL every process this one started, and theirs (the local Ray: GCS, raylet, workers, agents).

    ``known`` adds descendants seen earlier: Ray workers whose raylet has gone are no
    longer this process's descendants.
    """
    kill_processes(descendants(os.getpid()) | set(known))


class _Stopper:
    """SIGINT/SIGTERM handling for one simulation (installed only in the main thread)."""

    def __init__(self, run_dir: Path | None) -> None:
        self.run_dir = run_dir
        self.stop = threading.Event()
        self.done = threading.Event()
        self.signum: int | None = None
        self.ours: set[tuple[int, str]] = set()
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle SIGINT and SIGTERM here; again after ``ray.init``, whose core worker takes SIGTERM."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.signal(sig, self.handle)
                self.previous.setdefault(sig, previous)

    def restore(self) -> None:
        self.done.set()
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # a second signal: no more waiting
            self.hard_exit()
        self.signum = signum
        self.ours = descendants(os.getpid())  # Ray's workers are orphaned once ray.shutdown() stops the raylet
        logging.getLogger("flwr").setLevel(logging.CRITICAL + 1)  # the winding down is not news
        self.stop.set()
        threading.Thread(target=self.deadline, name="fl-ee-deadline", daemon=True).start()

    def deadline(self) -> None:
        if not self.done.wait(GRACE_S):
            self.hard_exit()

    def hard_exit(self) -> NoReturn:
        """Kill our Ray processes, say what was kept, and leave without waiting for any thread."""
        kill_children(self.ours)
        _leave("\n" + interrupted_message(self.signum or signal.SIGINT, self.run_dir))


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


def simulate(server_app: ServerApp, client_app: ClientApp, cfg: Config, run_dir: Path | None = None) -> None:
    """Run the apps with one simulated node per client; returns when the ServerApp ends.

    Raises :class:`Interrupted` when SIGINT or SIGTERM stopped the run (``run_dir``
    names the rounds kept), and ``RuntimeError`` whose ``__cause__`` is the root
    cause when Flower's runtime or Ray crashed.
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence Ray's FutureWarning
    flwr_logger = logging.getLogger("flwr")
    level, quiet = flwr_logger.level, _Quiet()
    flwr_logger.setLevel(logging.WARNING)
    flwr_logger.addFilter(quiet)
    stopper = _Stopper(run_dir)
    stopper.install()
    try:
        import ray

        if not ray.is_initialized():  # Flower would start it the same way; started here to take SIGTERM back
            init_ray(cfg)
        stopper.install()
        run_simulation(
            server_app=stoppable(server_app, stopper.stop),
            client_app=client_app,
            num_supernodes=cfg.data.num_clients,
            backend_config=backend_config(cfg),
        )
    except BaseException as exc:
        stopper.stop.set()  # a ServerApp thread still waiting for replies gives up
        if stopper.signum is not None:
            kill_children(stopper.ours)
            raise Interrupted(interrupted_message(stopper.signum, run_dir), stopper.signum) from None
        cause = _root_cause(exc)
        if cause is exc:
            raise
        raise RuntimeError(str(cause)) from cause
    finally:
        stopper.restore()
        flwr_logger.removeFilter(quiet)
        flwr_logger.setLevel(level)
    if stopper.signum is not None:
        kill_children(stopper.ours)  # what ray.shutdown() left of our local Ray, if anything
        raise Interrupted(interrupted_message(stopper.signum, run_dir), stopper.signum)
