"""The processes fl-ee starts die with it, also when it is killed with SIGKILL (Linux).

A local Ray binds the processes the driver starts (GCS, raylet, monitors) to the
driver with ``PR_SET_PDEATHSIG``, but the raylet's children (``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``, the workers) outlive a killed driver by a minute or more.
:func:`arm` starts a watchdog (this module run as a script: standard library only)
that waits for the end of the process that armed it, then kills what is left of it:

* every process started after :func:`arm`, which carries :data:`OWNER` in its environment
  (a process that retitles itself, as Ray's agents do, may overwrite it);
* every process of the armer's process group that holds a file open in a Ray session
  directory named by :func:`watch` (each Ray process has its logs there).

A cluster that fl-ee joins (``simulation.ray_address``, or one ``ray.init`` finds) is
never watched and its processes do not carry the mark: it is never touched.

Losing its raylet takes the armer down with it: Ray ends the process at once (``_Exit``),
saying why only in its driver log. The watchdog holds the armer's stderr: when a run
(:func:`running`) ended that way before :func:`finished`, it prints the run's line,
Ray's reason filled in.

:func:`die_with_parent` binds a child to its parent directly (``fl-ee sweep``'s runs).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

OWNER = "FL_EE_RAY_OWNER"  # the environment variable that marks the processes of one fl-ee process
PASSES = 20  # after the end: kill what is left, again until a pass finds nothing (a raylet may still spawn)
PASS_WAIT_S = 0.05
PR_SET_PDEATHSIG = 1
# a driver log's lines: "[time LEVEL pid tid] file.cc:line: message"; Ray's last words before it ends the process
_LOG_LINE = re.compile(r"^\[[^\]]*\] [\w.]+:\d+: (.*)$")
_RAY_LOST = re.compile(r"Terminate the process|Failed to connect to GCS|[Rr]aylet (has )?died|[Rr]aylet is dead")

_watchdog: subprocess.Popen[bytes] | None = None


def _holds_file_in(pid: int, dirs: Sequence[str]) -> bool:
    """Whether process ``pid`` has a file open under one of ``dirs``."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if any(target.startswith(d) for d in dirs):
            return True
    return False


def left_of(token: str, group: int, sessions: Sequence[str]) -> list[int]:
    """Live processes other than this one marked with ``token``, or of process ``group`` with a file in ``sessions``.

    Processes of other users cannot be read and are left out.
    """
    mark = f"{OWNER}={token}".encode()
    dirs = [os.path.join(s, "") for s in sessions]
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(pid)
            elif dirs and os.getpgid(pid) == group and _holds_file_in(pid, dirs):
                found.append(pid)
        except OSError:
            continue
    return found


def reap(token: str, group: int, sessions: Sequence[str]) -> None:
    """SIGKILL what :func:`left_of` finds, pass after pass until it finds nothing (at most :data:`PASSES`)."""
    for _ in range(PASSES):
        pids = left_of(token, group, sessions)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(PASS_WAIT_S)


def arm() -> None:
    """Mark the processes this one starts from now on, and start the watchdog that kills them once it ends.

    Idempotent: one mark per process; the watchdog is started again only if it is gone.
    Does nothing where ``/proc`` is missing (not Linux).
    """
    global _watchdog
    if not Path("/proc/self/fd").is_dir() or (_watchdog is not None and _watchdog.poll() is None):
        return
    token = os.environ.get(OWNER) if _watchdog is not None else None
    token = token or f"{os.getpid()}-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k != OWNER}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    # its own session: a Ctrl-C, or a kill of the whole process group, leaves it to clean up after them
    command = [sys.executable, "-m", "sims.reaper", token, str(os.getpgid(0)), str(os.getpid())]
    _watchdog = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 env=env, start_new_session=True)  # on our stderr: see _say
    os.environ[OWNER] = token


def _tell(kind: str, value: str = "") -> None:
    """One record for the watchdog: kind, a tab, value, a NUL byte; no-op when :func:`arm` started none."""
    if _watchdog is not None and _watchdog.stdin is not None:
        try:
            _watchdog.stdin.write(f"{kind}\t".encode() + os.fsencode(value) + b"\0")
            _watchdog.stdin.flush()
        except OSError:  # the watchdog is gone
            pass


def watch(session_dir: str) -> None:
    """Tell the watchdog about a Ray session directory of this process."""
    _tell("session", session_dir)


def running(line: str, rounds_file: Path, session_dir: str) -> None:
    """A run starts: should Ray end this process before :func:`finished`, the watchdog prints ``line``.

    ``{rounds}`` in it becomes "N finished rounds" (the lines of ``rounds_file``), ``{cause}``
    Ray's last words in the driver log of ``session_dir`` (the run's Ray, a cluster's too).
    """
    _tell("run", line)
    _tell("rounds", str(rounds_file))
    _tell("logs", session_dir)


def finished() -> None:
    """The run ended in an orderly way (it finished, failed or was stopped): the watchdog prints nothing."""
    _tell("end")


def ray_last_words(session_dir: str, pid: int) -> str | None:
    """Why Ray ended process ``pid``: the last line of its driver log, where it names what was lost."""
    for log in Path(session_dir, "logs").glob(f"python-core-driver-*_{pid}.log"):
        try:
            lines = log.read_text(errors="replace").splitlines()[-50:]
        except OSError:
            continue
        said = [found.group(1).strip() for line in lines if (found := _LOG_LINE.match(line))]
        if said and _RAY_LOST.search(said[-1]):
            return said[-1]
    return None


def _say(records: Sequence[bytes], pid: int) -> None:
    """Print the line of the last run (``records``) when it did not finish and Ray says it ended process ``pid``."""
    run: dict[str, str] = {}
    for record in records:
        kind, _, value = os.fsdecode(record).partition("\t")
        run = {} if kind == "end" else {**run, kind: value}
    if "run" not in run or (cause := ray_last_words(run["logs"], pid)) is None:
        return
    try:
        with open(run["rounds"], "rb") as handle:
            rounds = sum(1 for line in handle if line.endswith(b"\n"))
    except OSError:
        rounds = 0
    kept = f"{rounds} finished round{'' if rounds == 1 else 's'}"
    try:
        os.write(2, (run["run"].replace("{rounds}", kept).replace("{cause}", cause) + "\n").encode())
    except OSError:  # nobody reads our stderr any more
        pass


def watchdog_pid() -> int | None:
    """The pid of this process's watchdog, if it started one."""
    return None if _watchdog is None else _watchdog.pid


def die_with_parent(signum: int) -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``signum`` when this process ends.

    The child of a parent that is already gone by then exits at once. Where ``prctl``
    is missing (not Linux) the child is started as usual.
    """
    parent = os.getpid()
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    except (AttributeError, OSError):
        prctl = None

    def bind() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
            if os.getppid() != parent:
                os._exit(1)

    return bind


def main() -> None:
    """The watchdog (``TOKEN GROUP PARENT``, records on stdin): once its parent has ended, reap, then :func:`_say`.

    EOF on stdin comes when the parent ends or, on an orderly exit, a little before: the
    parent's teardown is waited for, then the watchdog has a new parent.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    token, group, parent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    records = [r for r in sys.stdin.buffer.read().split(b"\0") if r]
    sessions = [os.fsdecode(r.partition(b"\t")[2]) for r in records if r.startswith(b"session\t")]
    while os.getppid() == parent:
        time.sleep(PASS_WAIT_S)
    reap(token, group, sessions)
    _say(records, parent)


if __name__ == "__main__":
    main()
