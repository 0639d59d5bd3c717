"""Fault isolation: bad updates are rejected, bad aggregates stop or are refused, diverged runs stop."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fl_ee.core.config import load_config, parse_overrides
from fl_ee.federation.client import app as real_app
from fl_ee.federation.faults import (
    Diverged,
    DivergenceGuard,
    StrategyFault,
    aggregate_problem,
    all_lost,
    error_line,
    lost_worker,
    lost_workers_warning,
    update_problem,
    worker_lost_reason,
)
from fl_ee.federation.preflight import preflight
from fl_ee.federation.server import run_federation
from fl_ee.results.rundir import CLIENT_ERRORS, RunDir, json_safe, load_run, to_json
from fl_ee.wire.protocol import CLIENT, ClientAddress, reports_errors
from inprocess import InProcessGrid, sets

# every device always online and never dropping out, so every outcome below is the server's doing
RELIABLE = [f"tiers.{i}.{key}={value}" for i in range(3)
            for key, value in (("availability", 1.0), ("failure_rate", 0.0))]
TINY = ["rounds=4", "eval_every=1", "data.num_clients=6", "strategy.fraction_train=1.0", *RELIABLE,
        "training.local_epochs=1", "training.batch_size=64", "personalisation.epochs=1"]


def _strict(text: str) -> list[dict]:
    """Every line of a JSONL file, refusing NaN/Infinity tokens."""
    def refuse(token):
        raise ValueError(f"non-JSON token {token}")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def _run(tmp_path: Path, overrides: list[str], client_app: ClientApp | None = None):
    cfg = preflight(load_config(None, parse_overrides([*TINY, *overrides])))
    out = RunDir.create(tmp_path / "run")
    with InProcessGrid(2, client_app) as grid:
        summary = run_federation(grid, cfg, [out])
    return out.path, summary


# ------------------------------------------------------------------------------ pure checks


def test_update_problem_names_keys_shapes_dtypes_and_non_finite_values():
    sent = {"stages.0.w": np.zeros((2, 3), np.float32), "exits.0.b": np.zeros(3, np.float32)}
    assert update_problem(sent, {k: v + 1 for k, v in sent.items()}) is None
    assert update_problem(sent, {"stages.0.w": sent["stages.0.w"]}) == "missing exits.0.b"
    assert update_problem(sent, {**sent, "stages.1.w": np.zeros(1)}) == "unexpected stages.1.w"
    assert update_problem(sent, {**sent, "exits.0.b": np.zeros(4, np.float32)}) == \
        "exits.0.b is float32[4], expected float32[3]"
    assert update_problem(sent, {**sent, "exits.0.b": np.zeros(3, np.float64)}) == \
        "exits.0.b is float64[3], expected float32[3]"
    assert update_problem(sent, {**sent, "exits.0.b": np.array([0, np.nan, 0], np.float32)}) == \
        "non-finite values in exits.0.b"
    assert update_problem(sent, {**sent, "stages.0.w": np.full((2, 3), np.inf, np.float32)}) == \
        "non-finite values in stages.0.w"
    counts = {"n": np.zeros(2, np.int64)}
    assert update_problem(counts, {"n": np.array([1, 2])}) is None  # integers are always finite


def test_aggregate_problem_separates_a_broken_contract_from_non_finite_values():
    current = {"a": np.zeros(2, np.float32)}
    assert aggregate_problem(current, {"a": np.ones(2, np.float32)}) == (None, None)
    assert aggregate_problem(current, {"a": np.ones(3, np.float32)})[0] == "a is float32[3], expected float32[2]"
    assert aggregate_problem(current, {"a": np.array([1, np.nan], np.float32)}) == (None, "non-finite values in a")


def test_divergence_guard_counts_bad_rounds_in_a_row():
    guard = DivergenceGuard(limit=2)
    for rnd, bad in [(1, True), (2, False), (3, True)]:  # a good round resets the count
        guard.after_round(rnd, bad)
    with pytest.raises(Diverged, match="rounds 3-4"):
        guard.after_round(4, True)


def test_json_files_never_hold_nan_and_say_which_values_were_not_finite():
    record = {"round": 1, "train": {"metrics": {"train-loss": float("nan"), "ok": 1.5}}, "x": [1.0, float("inf")]}
    assert json_safe(record) == {"round": 1, "train": {"metrics": {"train-loss": None, "ok": 1.5}}, "x": [1.0, None],
                                 "non_finite": ["train.metrics.train-loss", "x.1"]}
    assert "NaN" not in to_json(record) and "Infinity" not in to_json(record)


RAY_SAYS = "The actor died unexpectedly before finishing this task.\n\tclass_name: ClientAppActor\n\tpid: 26908"


def test_a_lost_worker_reason_names_the_actor_and_ends_with_the_exception():
    reason = worker_lost_reason("9326e2f2", "ActorDiedError", RAY_SAYS)
    assert reason.splitlines()[0] == ("fl-ee: the Ray worker (actor 9326e2f2) running this client died; "
                                      "a fresh worker took its place")
    assert RAY_SAYS in reason
    assert error_line(reason) == "ActorDiedError: the Ray worker died"
    assert lost_worker(reason) == "9326e2f2"
    assert lost_worker("Traceback (most recent call last):\nOSError: disk full") is None
    assert all_lost([reason, worker_lost_reason("ab", "ActorUnavailableError", "")])
    assert not all_lost([reason, "OSError: disk full"]) and not all_lost([None])


def test_the_lost_workers_line_counts_workers_and_clients_of_the_round():
    a, b = (worker_lost_reason(actor, "ActorDiedError", RAY_SAYS) for actor in ("aa", "bb"))
    assert lost_workers_warning(5, {"train": {3: "OSError: disk full"}}) is None
    assert lost_workers_warning(5, {"train": {3: a, 4: a, 1: "OSError: disk full"}}) == \
        "a Ray worker died in round 5 (2 clients failed); replaced"
    # one client failing in both steps is one client; two actors are two workers
    assert lost_workers_warning(7, {"train": {3: a}, "evaluate": {3: b}}) == \
        "2 Ray workers died in round 7 (1 client failed); replaced"


# --------------------------------------------------------------------- the loop, in process


@pytest.mark.e2e
def test_a_diverging_run_rejects_every_update_and_stops_keeping_valid_json(tmp_path):
    with pytest.raises(Diverged, match=r"rounds 1-2 \(simulation.max_bad_rounds = 2\)"):
        _run(tmp_path, ["training.lr=1e6", "training.batch_size=16", "simulation.max_bad_rounds=2",
                        "strategy.fraction_evaluate=0"])  # the global model's evaluation alone, which is checked
    run = tmp_path / "run"
    records = _strict((run / "rounds.jsonl").read_text())
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert {c["outcome"] for c in record["clock"]["clients"]} == {"rejected"}
        assert all(c["reason"].startswith("non-finite values in ") for c in record["clock"]["clients"])
        # nothing was aggregated: the global model kept its initial weights, so its accuracy did not move
        assert record["evaluate"]["global"] == records[0]["evaluate"]["global"]
        assert record["train"]["metrics"] == {}  # no update reached the strategy
    assert not (run / "summary.json").exists()  # a broken run never looks like a result


def _plugin(tmp_path: Path, monkeypatch, body: str) -> str:
    module = f"faulty_{tmp_path.name.replace('-', '_')}"  # a fresh module per test: Python caches imports
    (tmp_path / f"{module}.py").write_text(
        "import numpy as np\nfrom strategies import DepthAwareStrategy\n\n\n"
        "class Faulty(DepthAwareStrategy):\n"
        f"    def aggregate_tensor(self, key, values, weights, current):\n        {body}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"strategy.name={module}:Faulty"


@pytest.mark.e2e
def test_a_plugin_returning_nan_leaves_the_model_unchanged_and_stops_the_run(tmp_path, monkeypatch):
    name = _plugin(tmp_path, monkeypatch, "return np.full_like(current, np.nan)")
    with pytest.raises(Diverged):
        _run(tmp_path, [name, "simulation.max_bad_rounds=3", "eval_every=4"])  # stopped before any evaluation
    records = _strict((tmp_path / "run" / "rounds.jsonl").read_text())
    assert len(records) == 3
    assert all(r["train"]["aggregate_rejected"].startswith("non-finite values in ") for r in records)
    assert all(c["outcome"] == "ok" for r in records for c in r["clock"]["clients"])  # the clients were fine


@pytest.mark.e2e
@pytest.mark.parametrize(("body", "detail"), [
    ("raise ValueError('boom')", "ValueError: boom"),
    ("return current[..., None]", "returned a bad global state: stages.0.0.weight is float32"),
])
def test_a_plugin_fault_names_the_strategy_method_and_round(tmp_path, monkeypatch, body, detail):
    name = _plugin(tmp_path, monkeypatch, body)
    with pytest.raises(StrategyFault) as info:
        _run(tmp_path, [name])
    assert str(info.value).startswith(f"strategy Faulty failed in aggregate_train (round 1): {detail}")


def _flaky_app() -> ClientApp:
    """The real ClientApp, except that client 1's training raises."""
    app = ClientApp()

    @app.train()
    @reports_errors
    def train(msg: Message, context: Context) -> Message:
        if ClientAddress.from_record(msg.content[CLIENT]).client_id == 1:
            raise OSError("disk full")
        return real_app(msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return real_app(msg, context)

    return app


@pytest.mark.e2e
def test_a_client_exception_is_a_failed_update_with_its_traceback_filed(tmp_path, capfd):
    run, summary = _run(tmp_path, ["rounds=2", "eval_every=2"], _flaky_app())
    records = _strict((run / "rounds.jsonl").read_text())
    for record in records:
        one = next(c for c in record["clock"]["clients"] if c["client_id"] == 1)
        assert one["outcome"] == "failed" and one["reason"] == "OSError: disk full"
    log = (run / CLIENT_ERRORS).read_text()
    assert log.count("--- round") == 2 and "Traceback" in log and 'raise OSError("disk full")' in log
    assert "Traceback" not in (run / "rounds.jsonl").read_text()
    assert "Traceback" not in capfd.readouterr().err  # not poured onto the terminal
    assert summary["stragglers"]["participation_by_tier"] is not None


def _lost_workers_app(evaluate_too: bool) -> ClientApp:
    """The real ClientApp, except that every client's training (and evaluation) is answered as a lost Ray worker's."""
    app = ClientApp()

    def lost(msg: Message) -> Message:
        reason = worker_lost_reason("ab12", "ActorDiedError", RAY_SAYS)
        return Message(Error(code=ErrorCode.UNKNOWN, reason=reason), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return lost(msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return lost(msg) if evaluate_too else real_app(msg, context)

    return app


@pytest.mark.e2e
def test_a_round_whose_workers_all_died_goes_on_and_says_so_in_one_line(tmp_path, capfd):
    """The error replies Flower's backend gets from :class:`sims.workers.HealingActorPool`; no client is at fault."""
    run, _ = _run(tmp_path, ["rounds=2", "eval_every=1"], _lost_workers_app(evaluate_too=False))
    records = _strict((run / "rounds.jsonl").read_text())
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert {c["outcome"] for c in record["clock"]["clients"]} == {"failed"}
        assert {c["reason"] for c in record["clock"]["clients"]} == {"ActorDiedError: the Ray worker died"}
        assert record["train"]["metrics"] == {}  # nothing to aggregate, and no crash
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if "Ray worker" in line] == [
        f"fl-ee: warning: a Ray worker died in round {r} (6 clients failed); replaced" for r in (1, 2)]
    assert (run / CLIENT_ERRORS).read_text().count("--- round") == 12


# ------------------------------------------------------------------------------ end to end


def _fl_ee(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fl_ee.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.e2e
def test_a_diverged_run_exits_3_in_one_line_and_stays_reportable(tmp_path):
    out = tmp_path / "run"
    diverging = [*TINY, "training.lr=1e6", "training.batch_size=16", "training.kd_warmup_rounds=0",
                 "simulation.max_bad_rounds=2"]
    done = _fl_ee("run", *sets(diverging), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("fl-ee")]
    assert lines == [f"fl-ee: error: training diverged: no finite update or aggregate in rounds 1-2 "
                     f"(simulation.max_bad_rounds = 2); 2 finished rounds kept in {out} "
                     f"(traceback in {out / 'error.log'})"]
    assert "Traceback" not in done.stderr
    _strict((out / "rounds.jsonl").read_text())
    assert load_run(out).stopped.startswith("training diverged")
    report = _fl_ee("report", str(out), cwd=tmp_path)
    assert report.returncode == 0 and "stopped: training diverged" in report.stdout


def test_a_failed_run_says_why_in_one_line_and_keeps_the_traceback(tmp_path, capsys):
    from fl_ee.cli import _stopped

    try:
        raise StrategyFault("Faulty", "aggregate_train", 3, "ValueError: boom")
    except StrategyFault as exc:
        fault = exc
    run = tmp_path / "run"
    run.mkdir()
    (run / "rounds.jsonl").write_text('{"round": 1}\n{"round": 2}\n')
    assert _stopped(fault, run, debug=False) == 1
    assert capsys.readouterr().err == (
        f"fl-ee: error: simulation failed: strategy Faulty failed in aggregate_train (round 3): ValueError: boom; "
        f"2 finished rounds kept in {run} (traceback in {run / 'error.log'}); `fl-ee resume {run}` continues\n")
    assert "raise StrategyFault" in (run / "error.log").read_text()
    # a run that finished no round has been removed by then: nothing to keep, nothing written
    assert _stopped(fault, tmp_path / "gone", debug=True) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith("ValueError: boom; no round finished, nothing kept")
    assert "Traceback" in err and not (tmp_path / "gone").exists()  # --debug prints it
