"""Stopping a running simulation: signals, a grid that can be stopped, and our Ray processes.

SIGINT or SIGTERM stops the round loop at its next exchange with the clients
(:class:`StoppableGrid`), lets Flower's runtime wind down and shut Ray down, and raises
:class:`Interrupted`. Should that take longer than :data:`GRACE_S` (a client stuck in a
long task, Ray still starting) or a second signal come, our Ray processes are killed and
the process exits with 130 at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fl_ee.results.rundir import ROUNDS
from sims import reaper

GRACE_S = 3.0  # after a signal, the longest wait for an orderly stop before killing Ray


def _leave(line: str) -> NoReturn:
    """Write ``line`` to stderr and exit with 130 without the interpreter's teardown."""
    reaper.finished()  # the line is ours
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
        with open(Path(run_dir) / ROUNDS, "rb") as handle:
            return sum(1 for line in handle if line.endswith(b"\n"))
    except OSError:
        return 0


def interrupted_message(signum: int, run_dir: Path | None) -> str:
    """The one line printed when a signal ends the run."""
    name = signal.Signals(signum).name
    if run_dir is None:
        return f"fl-ee: interrupted ({name})"
    if not (Path(run_dir) / ROUNDS).is_file():
        return f"fl-ee: interrupted ({name}) before the first round finished; nothing kept"
    n = kept_rounds(run_dir)
    return (f"fl-ee: interrupted ({name}); {n} finished round{'' if n == 1 else 's'} kept in {run_dir}; "
            f"resume with `fl-ee resume {run_dir}`")


def ray_lost_line(run_dir: Path) -> str:
    """The one line printed when Ray (its raylet) dies under the run, by the watchdog (:func:`sims.reaper.running`)."""
    return (f"fl-ee: error: Ray stopped under the run ({{cause}}); {{rounds}} kept in {run_dir}; "
            f"`fl-ee resume {run_dir}` continues")


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
    longer this process's descendants. The watchdog of :mod:`sims.reaper` is spared: it
    kills what is left once this process has ended.
    """
    kill_processes({p for p in descendants(os.getpid()) | set(known) if p[0] != reaper.watchdog_pid()})


class Stopper:
    """SIGINT/SIGTERM handling for one simulation (installed only in the main thread)."""

    def __init__(self, run_dir: Path | None, on_interrupt: Callable[[], object] | None = None) -> None:
        self.run_dir = run_dir
        self.on_interrupt = on_interrupt  # tidies the run directory before the line is said
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
        """The simulation is over: give the signals back to their previous handlers."""
        self.done.set()
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The first signal asks the round loop to stop; a second one exits at once."""
        if self.signum is not None:  # a second signal: no more waiting
            self.hard_exit()
        self.signum = signum
        self.ours = descendants(os.getpid())  # Ray's workers are orphaned once ray.shutdown() stops the raylet
        logging.getLogger("flwr").setLevel(logging.CRITICAL + 1)  # the winding down is not news
        self.stop.set()
        threading.Thread(target=self.deadline, name="fl-ee-deadline", daemon=True).start()

    def deadline(self) -> None:
        """Exit the hard way when the orderly stop takes longer than ``GRACE_S``."""
        if not self.done.wait(GRACE_S):
            self.hard_exit()

    def hard_exit(self) -> NoReturn:
        """Kill our Ray processes, say what was kept, and leave without waiting for any thread."""
        kill_children(self.ours)
        _leave("\n" + self.message())

    def message(self) -> str:
        """Tidy the run directory (``on_interrupt``), then the line that says what was kept."""
        if self.on_interrupt is not None:
            self.on_interrupt()
        return interrupted_message(self.signum or signal.SIGINT, self.run_dir)
