"""Nothing hangs: resources Ray cannot host, unreachable clusters, crashes, SIGINT and SIGTERM."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from fl_ee.core.config import load_config, parse_overrides
from fl_ee.core.errors import UserError
from sims import backend, stopping

REPO = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def env(**extra: str) -> dict[str, str]:
    pythonpath = os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=pythonpath, FLWR_TELEMETRY_ENABLED="0", **extra)


def cfg_with(*overrides: str):
    return load_config(None, parse_overrides(list(overrides)))


# ---------------------------------------------------------------------------------- fast


def test_client_resources_beyond_every_node_are_refused():
    with pytest.raises(UserError, match=r"^simulation.client_cpus: 4 CPUs per client, but this machine has 2"):
        backend.check_fit(cfg_with("simulation.client_cpus=4"), [{"CPU": 2.0}], "this machine")
    with pytest.raises(UserError, match=r"^simulation.client_gpus: 1 GPUs per client, .* has 0; set it to 0"):
        backend.check_fit(cfg_with("simulation.client_gpus=1"), [{"CPU": 2.0}], "this machine")
    # one client must fit on one node, as Flower sizes its actor pool per node
    with pytest.raises(UserError, match="client_cpus"):
        backend.check_fit(cfg_with("simulation.client_cpus=3"), [{"CPU": 2.0}, {"CPU": 2.0}], "the cluster")
    backend.check_fit(cfg_with("simulation.client_cpus=2", "simulation.client_gpus=0.5"),
                     [{"CPU": 1.0, "GPU": 4.0}, {"CPU": 2.0, "GPU": 1.0}], "the cluster")


def test_a_local_check_compares_with_this_machine(monkeypatch):
    monkeypatch.setattr(backend, "local_cpus", lambda: 2.0)
    with pytest.raises(UserError, match="client_cpus: 8 CPUs per client, but this machine has 2; use at most 2"):
        backend.check_backend(cfg_with("simulation.client_cpus=8"))
    backend.check_backend(cfg_with("simulation.client_cpus=2"))


def test_an_unreachable_address_fails_at_once():
    started = time.monotonic()
    with pytest.raises(UserError, match=r"^simulation.ray_address: no Ray cluster answers at 127.0.0.1:\d+"):
        backend.probe(f"127.0.0.1:{closed_port()}")
    assert time.monotonic() - started < backend.PROBE_TIMEOUT_S + 1


def test_auto_without_a_cluster_says_so(monkeypatch):
    import ray._private.services as services

    def nothing(addr, temp_dir=None):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address", nothing)
    with pytest.raises(UserError, match="ray_address: auto: no running Ray cluster found"):
        backend.resolve_address("auto")


def test_addresses_are_split_into_host_and_port():
    assert backend._host_port("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert backend._host_port("ray://head:10001") == ("head", 10001)
    assert backend._host_port("[::1]:6379") == ("::1", 6379)
    assert backend._host_port("local") is None


class FakeGrid:
    """Replies to nothing: the grid of a runtime that has crashed."""

    pull_interval = 0.01

    def get_node_ids(self):
        return [1, 2]

    def push_messages(self, messages):
        return ["a", "b"]

    def pull_messages(self, ids):
        return []


def test_a_stopped_grid_ends_a_wait_for_replies():
    stop = threading.Event()
    grid = stopping.StoppableGrid(FakeGrid(), stop)  # type: ignore[arg-type]
    assert list(grid.get_node_ids()) == [1, 2]
    assert grid.send_and_receive([], timeout=0.05) == []
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(stopping.SimulationStopped):
        grid.send_and_receive([])
    assert time.monotonic() - started < 1
    with pytest.raises(stopping.SimulationStopped):
        grid.get_node_ids()


def test_the_interruption_line_counts_the_kept_rounds(tmp_path):
    (tmp_path / "rounds.jsonl").write_text('{"round": 1}\n{"round": 2}\n{"round": 3')  # a torn last line
    line = stopping.interrupted_message(signal.SIGINT, tmp_path)
    assert line == (f"fl-ee: interrupted (SIGINT); 2 finished rounds kept in {tmp_path}; "
                    f"resume with `fl-ee resume {tmp_path}`")


@pytest.mark.e2e
def test_flowers_crash_wrappers_are_unwrapped():
    from sims import engine  # Flower's simulation runtime and Ray: a second's import, not for collection

    root = ValueError("ActorPool is empty.")
    try:
        try:
            raise RuntimeError("Simulation Runtime crashed.") from root
        except RuntimeError as inner:
            raise RuntimeError("An error was encountered. Ending simulation.") from inner
    except RuntimeError as outer:
        assert engine._root_cause(outer) is root
    mine = RuntimeError("every client failed to train in round 3")
    assert engine._root_cause(mine) is mine


# ------------------------------------------------------------------------- end to end


def fl_ee(*args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fl_ee.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env(**extra))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.e2e
def test_client_cpus_beyond_this_machine_are_refused_before_anything_starts(tmp_path):
    cpus = os.cpu_count() or 1
    started = time.monotonic()
    done = fl_ee("run", "--set", f"simulation.client_cpus={cpus * 2}", "--out", str(tmp_path / "run"), timeout=60)
    assert done.returncode == 2, done.stderr
    assert error_lines(done.stderr) == [done.stderr.strip()]
    assert done.stderr.startswith(f"fl-ee: error: simulation.client_cpus: {cpus * 2} CPUs per client, ")
    assert not (tmp_path / "run").exists()
    assert time.monotonic() - started < 30


@pytest.mark.e2e
def test_an_unreachable_ray_address_fails_within_30s(tmp_path):
    started = time.monotonic()
    done = fl_ee("run", "--set", f"simulation.ray_address=127.0.0.1:{closed_port()}", "--out", str(tmp_path / "run"),
                 timeout=60)
    assert time.monotonic() - started < 30
    assert done.returncode == 2, done.stderr
    assert error_lines(done.stderr) == [done.stderr.strip()]
    assert done.stderr.startswith("fl-ee: error: simulation.ray_address: no Ray cluster answers at 127.0.0.1:")
    assert not (tmp_path / "run").exists()


CRASH = """
import sys
from fl_ee.federation.client import app as client_app
from fl_ee.core.config import load_config, parse_overrides
from fl_ee.federation.preflight import preflight
from fl_ee.federation.server import make_server_app
from sims.engine import simulate

# more CPUs per client than any node has: Flower's actor pool comes up empty and its runtime
# crashes while the ServerApp thread waits for the clients' first replies
cfg = preflight(load_config(None, parse_overrides(["rounds=2", "data.num_clients=4", "simulation.client_cpus=64"])))
try:
    simulate(make_server_app(cfg, []), client_app, cfg)
except RuntimeError as exc:
    print(f"crashed: {exc.__cause__ or exc}", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture
def raytmp():
    """This test's own Ray temp dir (short: Ray's socket paths must stay short), to find its processes by."""
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.e2e
def test_a_crashed_runtime_ends_the_process(raytmp):
    done = subprocess.run([sys.executable, "-c", CRASH], capture_output=True, text=True, timeout=90, cwd=REPO,
                          env=env(RAY_TMPDIR=raytmp))
    assert done.returncode == 1, done.stderr
    assert error_lines(done.stderr)[-1].startswith("crashed: ActorPool is empty."), done.stderr
    assert "Traceback" not in done.stderr
    assert not ours_alive(raytmp)


def ours_alive(raytmp: str) -> list[str]:
    """Processes whose command line names this run's Ray temp dir (raylet, GCS, workers, agents)."""
    found = subprocess.run(["pgrep", "-af", raytmp], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def descendants(pid: int) -> list[int]:
    return [p for p, _ in stopping.descendants(pid)]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_run_within_5s_and_leaves_no_ray_behind(signum, tmp_path, raytmp):
    out = tmp_path / "run"
    run = subprocess.Popen(
        [sys.executable, "-m", "fl_ee.cli", "run", "--set", "rounds=30", "--set", "data.num_clients=6",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env(RAY_TMPDIR=raytmp),
    )
    try:
        deadline = time.monotonic() + 150
        while not (out / "rounds.jsonl").exists() or len((out / "rounds.jsonl").read_text().splitlines()) < 2:
            assert run.poll() is None, run.communicate()[1]
            assert time.monotonic() < deadline, "round 2 never came"
            time.sleep(0.05)
        ours = descendants(run.pid)
        assert ours and ours_alive(raytmp), "no Ray processes of this run to check"
        sent = time.monotonic()
        run.send_signal(signum)
        _, stderr = run.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, stderr
    assert took < 5, f"took {took:.1f}s"
    kept = len((out / "rounds.jsonl").read_text().splitlines())
    assert kept >= 2
    name = signal.Signals(signum).name
    last = error_lines(stderr)[-1]
    assert last == (f"fl-ee: interrupted ({name}); {kept} finished rounds kept in {out}; "
                    f"resume with `fl-ee resume {out}`"), stderr
    assert "Traceback" not in stderr and "Exception" not in stderr and "SIGTERM received" not in stderr, stderr
    time.sleep(0.5)
    assert not [pid for pid in ours if alive(pid)], "Ray processes of this run outlived it"
    assert not ours_alive(raytmp)


ARMED = """
import os, subprocess, sys, time
from sims import reaper

reaper.arm()
session = sys.argv[1]
unmarked = {k: v for k, v in os.environ.items() if k != reaper.OWNER}
marked = subprocess.Popen(["sleep", "60"])
grouped = subprocess.Popen(["sleep", "60"], stdout=open(os.path.join(session, "a.log"), "w"), env=unmarked)
outsider = subprocess.Popen(["sleep", "60"], stdout=open(os.path.join(session, "b.log"), "w"), env=unmarked,
                            start_new_session=True)  # like a `tail -f` of a Ray log in another terminal
reaper.watch(session)
print(marked.pid, grouped.pid, outsider.pid, reaper.watchdog_pid(), flush=True)
time.sleep(60)
"""


def test_the_watchdog_kills_what_its_process_started_once_it_is_killed_and_nothing_else(tmp_path):
    armed = subprocess.Popen([sys.executable, "-c", ARMED, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             cwd=REPO, env=env())
    pids = [int(p) for p in armed.stdout.readline().split()]
    marked, grouped, outsider, watchdog = pids
    try:
        assert all(alive(pid) for pid in pids)
        armed.kill()
        armed.wait()
        deadline = time.monotonic() + 5
        while (alive(marked) or alive(grouped) or alive(watchdog)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(marked) and not alive(grouped) and not alive(watchdog)
        assert alive(outsider)
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


ENDED_BY_RAY = """
import os, signal, sys
from pathlib import Path
from sims import reaper

session, rounds, line, finish, words = sys.argv[1:]
reaper.arm()
(Path(session) / "logs").mkdir(parents=True)
driver_log = Path(session) / "logs" / f"python-core-driver-01000000ffffffff_{os.getpid()}.log"
driver_log.write_text("[2026-12-03 10:01:15,644 W 1 2] reference_counter.cc:1735: Object ref removed\\n" + words)
reaper.running(line, Path(rounds), session)
if finish == "yes":
    reaper.finished()
os.kill(os.getpid(), signal.SIGKILL)  # as Ray's _Exit: no Python code runs after it
"""
RAY_LAST_WORDS = ("The connection to the plasma store is failed. Terminate the process. Status: IOError: Broken pipe")


@pytest.mark.parametrize(("finish", "words", "said"), [
    ("no", f"[2026-12-03 10:01:15,877 W 1 3] connection.cc:216: {RAY_LAST_WORDS}\n", True),
    ("yes", f"[2026-12-03 10:01:15,877 W 1 3] connection.cc:216: {RAY_LAST_WORDS}\n", False),  # an orderly end
    ("no", "", False),  # killed by someone else: Ray did not end it
    ("no", "[2026-12-03 10:01:15,877 I 1 3] task_event_buffer.cc:564: Reporting task events to GCS every 1000ms.\n",
     False),  # nor here: Ray names the GCS, but in passing
])
def test_the_watchdog_says_the_runs_line_when_ray_ended_its_process(tmp_path, finish, words, said):
    run = tmp_path / "run"
    run.mkdir()
    (run / "rounds.jsonl").write_text('{"round": 1}\n{"round": 2}\n')
    line = stopping.ray_lost_line(run)
    done = subprocess.run([sys.executable, "-c", ENDED_BY_RAY, str(tmp_path / "session"), str(run / "rounds.jsonl"),
                           line, finish, words], capture_output=True, text=True, cwd=REPO, env=env(), timeout=60)
    assert done.returncode == -signal.SIGKILL
    expected = (f"fl-ee: error: Ray stopped under the run ({RAY_LAST_WORDS}); 2 finished rounds kept in {run}; "
                f"`fl-ee resume {run}` continues\n")
    assert done.stderr == (expected if said else "")


BOUND = """
import signal, subprocess, time
from sims.reaper import die_with_parent

child = subprocess.Popen(["sleep", "60"], start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_child_bound_to_its_parent_gets_the_signal_when_the_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", BOUND], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env())
    child = int(parent.stdout.readline())
    try:
        assert alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(child)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_descendants_are_found_and_killed_by_pid_and_start_time():
    child = subprocess.Popen(["sleep", "30"])
    try:
        ours = stopping.descendants(os.getpid())
        assert child.pid in {pid for pid, _ in ours}
        stopping.kill_processes({(child.pid, "not its start time")})  # a reused pid is spared
        assert child.poll() is None
        stopping.kill_processes(ours)
        assert child.wait(timeout=5) == -signal.SIGKILL
    finally:
        child.kill()


# ------------------------------------------------------------------ SIGKILL leaves no orphans


def wait_for_round(out: Path, process: subprocess.Popen, deadline_s: float = 150) -> None:
    deadline = time.monotonic() + deadline_s
    while not (out / "rounds.jsonl").is_file() or not (out / "rounds.jsonl").read_text().strip():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "round 1 never came"
        time.sleep(0.1)


def _command(pid: int) -> bytes:
    """The first word of a process's command line (``b""`` once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return b""


def survivors(ours: set[tuple[int, str]], raytmp: str, wait_s: float) -> list[str]:
    """What is left, after at most ``wait_s``, of the processes ``ours`` and of this Ray temp dir's session."""
    deadline = time.monotonic() + wait_s
    while True:
        table = stopping._processes()
        left = [f"{pid} {Path(f'/proc/{pid}/cmdline').read_bytes()[:80]!r}" for pid, started in ours
                if pid in table and table[pid][1] == started and alive(pid)] + ours_alive(raytmp)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.mark.e2e
def test_a_killed_run_takes_its_ray_along(tmp_path, raytmp):
    out = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "fl_ee.cli", "run", "--set", "rounds=30", "--set",
                            "data.num_clients=6", "--out", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
                           env=env(RAY_TMPDIR=raytmp))
    try:
        wait_for_round(out, run)
        agents = {b"ray::DashboardAgent", b"ray::RuntimeEnvAgent"}  # Ray's own fate-sharing misses these
        deadline = time.monotonic() + 60  # a busy machine can finish round 1 before the agents take their names
        while True:
            ours = stopping.descendants(run.pid)
            names = {_command(pid) for pid, _ in ours}
            if agents <= names or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert agents <= names, names
        run.kill()
        run.wait(timeout=10)
        assert survivors(ours, raytmp, wait_s=10) == []
    finally:
        run.kill()
        run.communicate()


@pytest.mark.e2e
def test_a_killed_sweep_takes_its_running_run_and_its_ray_along(tmp_path, raytmp):
    run_dir = tmp_path / "sweep" / "base" / "seed-0"
    sweep = subprocess.Popen([sys.executable, "-m", "fl_ee.cli", "sweep", "--seeds", "1", "--set", "rounds=30",
                              "--set", "data.num_clients=6", "--out", str(tmp_path / "sweep")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env=env(RAY_TMPDIR=raytmp))
    try:
        wait_for_round(run_dir, sweep)
        ours = stopping.descendants(sweep.pid)
        runs = [pid for pid, _ in ours if b"fl_ee.cli\0run\0" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(runs) == 1 and len(ours) > 5, ours  # the run and its Ray
        sweep.kill()
        sweep.wait(timeout=10)
        assert survivors(ours, raytmp, wait_s=15) == []
    finally:
        sweep.kill()
        sweep.communicate()
    assert "interrupted (SIGTERM)" in (run_dir.parent / "seed-0.log").read_text()  # the run stopped in order
