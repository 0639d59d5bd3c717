"""Checkpoints and resume, fast: in-process runs interrupted and resumed, strategy state by hand, refusal rules.

A run "killed" in round ``k + 1`` is its directory as it was in ``after_round`` of that round:
the run directory has logged that round and every client that trained in it has saved its
round-``k + 1`` exits, but no checkpoint of it exists, as after a SIGKILL at that moment.
An observer copies it then (:class:`CopyIn`), and the run goes on to be the uninterrupted
one; where a test needs a run of its own to end there, an observer raises (:class:`KillIn`).
The Ray version, with a real SIGKILL, is in ``test_resume_e2e.py``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord
from test_deployment import curve_reply

from fl_ee.cli import main
from fl_ee.core.atomic import read_npz, write_npz
from fl_ee.core.config import config_from_dict
from fl_ee.core.errors import UserError
from fl_ee.federation import clientstate
from fl_ee.federation.checkpoint import (
    Checkpoints,
    loop_state_from_json,
    loop_state_to_json,
    split_strategy_state,
)
from fl_ee.results.observers import LoopState, Observer
from fl_ee.results.rundir import PLACEMENT, ROUNDS, RunDir
from fl_ee.results.summary import Evaluation
from fl_ee.wire.protocol import EvaluateReply
from inprocess import resume_inprocess, run_inprocess
from strategies import ClientInfo, DepthFL, FedAdam, FedAvgM, FedDyn
from strategies.aggregation import holder_aggregate

# the quickstart preset, made cheap: 4 clients (2 train per round), 3 rounds, evaluated in rounds 2 and 3 (2
# clients each: a summary holds results of both, so a resumed run must have restored round 2's)
FAST = ["rounds=3", "eval_every=2", "data.num_clients=4", "strategy.fraction_evaluate=0.5", "training.local_epochs=1",
        "training.batch_size=64", "personalisation.epochs=1", "model.width=8"]


class Killed(Exception):
    pass


class KillIn(Observer):
    """Raises in ``after_round`` of round ``rnd`` (after the run directory logged it)."""

    def __init__(self, rnd: int) -> None:
        self.rnd = rnd

    def after_round(self, record):
        if record["round"] == self.rnd:
            raise Killed(self.rnd)


def _lines(path: Path) -> list[dict]:
    records = [json.loads(line) for line in (path / "rounds.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("wall_s")
    return records


def _poison_stale_exits(run: Path, after: int) -> int:
    """Overwrite every client file of a round after ``after`` with zeros; how many there were."""
    stale = [p for p in (run / "checkpoint" / "clients").glob("*/round-*.npz") if int(p.stem[6:]) > after]
    for path in stale:
        write_npz(path, {k: np.zeros_like(v) for k, v in read_npz(path).items()})
    return len(stale)


class CopyIn(Observer):
    """Copies the run directory ``run`` to ``to`` in ``after_round`` of round ``rnd`` (after the run directory
    logged it): what killing the run at that moment leaves."""

    def __init__(self, rnd: int, run: Path, to: Path) -> None:
        self.rnd, self.run, self.to = rnd, run, to

    def after_round(self, record):
        if record["round"] == self.rnd:
            shutil.copytree(self.run, self.to)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Runs made once per module on first use, by (strategy, checkpoint_every, round killed in or None, overrides).

    A killed run is made with its uninterrupted one (the same config): a copy of that run's
    directory in the round it is killed in. Tests that change one work on a copy (:func:`copy_of`).
    """
    runs: dict[tuple, Path] = {}

    def get(strategy: str, every: int = 1, kill_in: int | None = None, extra: tuple[str, ...] = ()) -> Path:
        key = (strategy, every, kill_in, extra)
        if key not in runs:
            folder = tmp_path_factory.mktemp(strategy)
            runs[(strategy, every, None, extra)] = folder / "run"
            observers = []
            if kill_in is not None:
                runs[key] = folder / f"killed-in-{kill_in}"
                observers = [CopyIn(kill_in, folder / "run", runs[key])]
            with contextlib.redirect_stderr(io.StringIO()):  # its warnings are not the using test's output
                run_inprocess(folder / "run", [*FAST, f"strategy.name={strategy}", f"checkpoint_every={every}",
                                               *extra], observers=observers)
        return runs[key]

    return get


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _same_results(run: Path, reference: Path) -> None:
    for name in ("summary.json", "clients.csv"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    assert _lines(run) == _lines(reference)  # lines after the checkpoint were dropped and written again


@pytest.mark.e2e
@pytest.mark.parametrize(("strategy", "every", "kill_in", "resumes_after", "extra"), [
    ("depthfl", 1, 3, 2, ()),   # killed in the last round: resumed after round 2
    ("fedadam", 1, 2, 1, ()),   # Adam's moments and step counts restored from round 1
    ("fedavgm", 1, 2, 1, ()),   # the server momentum restored from round 1
    ("feddyn", 1, 2, 1, ()),    # the server's h from the checkpoint, every client's g_prev from its own files
    ("fjord", 1, 2, 1, ("tiers.0.width=0.25", "tiers.1.width=0.5", "strategy.options.distill=true")),  # width
    # tiers: each step's width drawn from its own seed, personal exits of the client's width
    ("depthfl", 2, 1, 0, ()),   # killed before the first checkpoint: starts over in the same directory
    ("depthfl", 1, 3, 2, ("data.unseen_fraction=0.25",)),  # an unseen client's round-2 evaluation restored
    ("depthfl", 1, 3, 2, ("strategy.selection='oort'", "strategy.selection_options.epsilon=0.5")),  # Oort's
    # utilities of rounds 1 and 2 restored: round 3 exploits them
])
def test_a_resumed_run_ends_byte_for_byte_as_an_uninterrupted_one(made, tmp_path, strategy, every, kill_in,
                                                                 resumes_after, extra):
    run = copy_of(made(strategy, every, kill_in, extra), tmp_path)
    assert len(_lines(run)) == kill_in and not (run / "summary.json").exists()
    latest = Checkpoints(run).latest()
    assert (latest.round if latest else 0) == resumes_after
    # clients saved exits of the killed round; were any of them read, the results would differ
    assert _poison_stale_exits(run, resumes_after) > 0

    resume_inprocess(run, seed=7)  # fresh client contexts, other node ids and reply order
    _same_results(run, made(strategy, extra=extra))
    with open(run / "clients.csv") as handle:  # round 2's results of the clients not evaluated in round 3 too
        assert {row["evaluated_round"] for row in csv.DictReader(handle)} == {"2", "3"}
    assert [p.name for p in (run / "checkpoint").iterdir() if p.name.startswith("round-")] == ["round-000003"]


@pytest.mark.e2e
def test_oorts_utilities_are_in_the_checkpoint(made):
    oort = ("strategy.selection='oort'", "strategy.selection_options.epsilon=0.5")
    state = json.loads((made("depthfl", 1, 3, oort) / "checkpoint" / "round-000002" / "state.json").read_text())
    # round 1 tries 2 clients; round 2 one more (round(0.5 x 0.98 x 2) = 1 slot) and exploits the better one again
    explored = state["selection"]["explored"]
    assert len(explored) == 3 and sorted(r for _, r, _ in explored.values()) == [1, 2, 2]


@pytest.mark.e2e
def test_feddyn_clients_save_g_prev_beside_their_exits_each_round(made):
    files = sorted((made("feddyn", 1, 2) / "checkpoint" / "clients").glob("*/round-*.npz"))
    assert {p.name for p in files} == {"round-000001.npz", "round-000002.npz"}  # round 2's: the killed round's
    for path in files:
        namespaces = {key.split("/")[0] for key in read_npz(path)}
        assert namespaces == {"exits", "feddyn"}


@pytest.mark.e2e
def test_resuming_a_run_whose_checkpoint_is_its_last_round_only_writes_the_summary(made, tmp_path):
    run = copy_of(made("depthfl"), tmp_path)  # as if killed after the last checkpoint, before summary.json
    (run / "summary.json").unlink()
    (run / "clients.csv").unlink()
    grid, _ = resume_inprocess(run)
    assert "train" not in grid.calls and "evaluate" not in grid.calls  # no round left to run
    _same_results(run, made("depthfl"))


@pytest.mark.e2e
def test_a_resumed_run_trains_at_the_uninterrupted_runs_lr_schedule(made, tmp_path):
    scheduled = [*FAST, "training.lr_schedule=cosine", "training.lr_min=0.001"]  # 0.05, 0.0255, 0.001
    run_inprocess(tmp_path / "whole", scheduled, observers=[CopyIn(2, tmp_path / "whole", tmp_path / "run")])
    resume_inprocess(tmp_path / "run", seed=7)  # rounds 2 and 3 again, each at its own lr
    _same_results(tmp_path / "run", tmp_path / "whole")
    plain = json.loads((made("depthfl") / "summary.json").read_text())["accuracy"]
    assert json.loads((tmp_path / "whole" / "summary.json").read_text())["accuracy"] != plain  # the lr mattered


@pytest.mark.e2e
def test_the_new_training_knobs_at_their_defaults_change_no_result(made, tmp_path):
    defaults = ["training.weight_decay=0.0", "training.clip_norm=0.0", "training.lr_schedule='constant'"]
    run_inprocess(tmp_path / "run", [*FAST, *defaults])
    _same_results(tmp_path / "run", made("depthfl"))


# ----------------------------------------------------------------------- the checkpoint itself


def _reply(p: int) -> EvaluateReply:
    return curve_reply(config_from_dict({}), p, 10, (0.1, 1 / 3), 1000.0, calib=lambda i: (2 / 3, 2.5),
                       test=lambda i: (0.5, 1 / 3), adaptive=0.7, expected=123.4, fractions=(0.25, 0.75))


def test_loop_state_round_trips_through_json_exactly():
    state = LoopState(ArrayRecord(), round=4, results={3: Evaluation(4, _reply(3)), 0: Evaluation(2, _reply(0))},
                      global_eval={"by_exit": {"1": 0.1, "2": 2 / 3}, "ensemble": 0.5},
                      clocks=[{"round_time_s": 1 / 3, "virtual_time_s": 7 / 3, "clients": [{"time_s": None}]}],
                      accuracy_at=[(1.5, None), (7 / 3, 0.875)])
    back = loop_state_from_json(json.loads(json.dumps(loop_state_to_json(state))), state.arrays)
    assert back == state and back.virtual_time_s == 7 / 3
    assert isinstance(back.results[3].reply.exit_accuracy, tuple)


def _clients(depths):
    return [ClientInfo(node_id=100 + i, client_id=i, tier=f"t{d}", depth=d, num_train=10, num_test=2)
            for i, d in enumerate(depths)]


def _saved_and_loaded(strategy, into, tmp_path):
    """``strategy.state_dict()`` through the checkpoint's files (npz + JSON) into ``into``."""
    arrays, values = split_strategy_state(strategy.state_dict())
    write_npz(tmp_path / "s.npz", arrays)
    into.load_state_dict({**read_npz(tmp_path / "s.npz"), **json.loads(json.dumps(values))})
    return into


def test_fedadam_state_dict_by_hand_and_round_trip(tmp_path):
    a = FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    # one step on "k": delta = 1.5 - 1 = 0.5, m = 0.1 * 0.5 = 0.05, v = 0.01 * 0.25 = 0.0025, t = 1
    a.aggregate_tensor("k", [np.array([1.0]), np.array([2.0])], [1, 1], np.array([1.0]))
    state = a.state_dict()
    assert set(state) == {"m/k", "v/k", "t/k"} and state["t/k"] == 1
    assert state["m/k"][0] == pytest.approx(0.05) and state["v/k"][0] == pytest.approx(0.0025)
    b = _saved_and_loaded(a, FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3), tmp_path)
    # the second step, from the original and from the restored strategy: the same bits
    current = np.array([1.2], np.float32)
    step = [s.aggregate_tensor("k", [np.array([0.9], np.float32)], [1], current) for s in (a, b)]
    assert step[0].tobytes() == step[1].tobytes() and b.t == {"k": 2}
    assert b.m["k"][0] == pytest.approx(0.9 * 0.05 + 0.1 * (0.9 - 1.2), rel=1e-5)


def test_feddyn_state_dict_by_hand_and_round_trip(tmp_path):
    a = FedDyn(alpha=0.5, weighted=False)
    a.register_clients(_clients([1, 2, 2, 2]))  # M = 4
    current = {"stages.0.w": np.array([1.0], np.float32), "stages.1.w": np.array([1.0], np.float32)}
    updates = [{"stages.0.w": np.array([2.0], np.float32)},
               {"stages.0.w": np.array([4.0], np.float32), "stages.1.w": np.array([3.0], np.float32)}]
    current = holder_aggregate(updates, [1, 1], current, a.aggregate_tensor)
    # stages.0: 2 holders, average 3: h = -0.5 * 2/4 * 2 = -0.5; stages.1: 1 holder, average 3: h = -0.25
    assert {k: float(v[0]) for k, v in a.state_dict().items()} == {"h/stages.0.w": -0.5, "h/stages.1.w": -0.25}
    b = FedDyn(alpha=0.5, weighted=False)
    b.register_clients(_clients([1, 2, 2, 2]))
    _saved_and_loaded(a, b, tmp_path)
    again = [holder_aggregate(updates, [1, 1], current, s.aggregate_tensor) for s in (a, b)]
    assert all(again[0][k].tobytes() == again[1][k].tobytes() for k in current)


def test_fedavgm_state_dict_by_hand_and_round_trip(tmp_path):
    a = FedAvgM(server_learning_rate=1.0, server_momentum=0.5)
    a.aggregate_tensor("k", [np.array([1.5], np.float32)], [1], np.array([1.0], np.float32))  # v = 0.5
    assert {k: float(v[0]) for k, v in a.state_dict().items()} == {"v/k": 0.5}
    b = _saved_and_loaded(a, FedAvgM(server_learning_rate=1.0, server_momentum=0.5), tmp_path)
    current = np.array([1.5], np.float32)
    step = [s.aggregate_tensor("k", [np.array([1.25], np.float32)], [1], current) for s in (a, b)]
    assert step[0].tobytes() == step[1].tobytes() and step[0][0] == pytest.approx(1.5)  # v = 0.25 - 0.25 = 0
    with pytest.raises(ValueError, match="unexpected state entries"):
        FedAvgM().load_state_dict({"h/k": np.zeros(1)})


def test_a_stateless_strategy_saves_nothing_and_refuses_foreign_state():
    assert DepthFL().state_dict() == {}
    DepthFL().load_state_dict({})
    with pytest.raises(ValueError, match="keeps no state"):
        DepthFL().load_state_dict({"h/k": np.zeros(1)})
    with pytest.raises(ValueError, match="unexpected state entry"):
        FedAdam().load_state_dict({"x/k": np.zeros(1)})
    with pytest.raises(TypeError):
        split_strategy_state({"bad": object()})
    with pytest.raises(TypeError, match="without pickle"):
        split_strategy_state({"bad": np.array([object()])})


def test_client_files_a_client_reads_and_the_ones_a_checkpoint_prunes(tmp_path):
    for rnd in (1, 3, 4):
        clientstate.save_state(tmp_path, 7, rnd, {"0.w": np.full(2, float(rnd), np.float32)})
    assert clientstate.load_state(tmp_path, 7, through=0) is None
    assert clientstate.load_state(tmp_path, 7, through=2)["0.w"][0] == 1.0  # rounds 3 and 4 are unseen
    assert clientstate.load_state(tmp_path, 7, through=9)["0.w"][0] == 4.0
    assert clientstate.load_state(tmp_path, 8, through=9) is None
    clientstate.prune(tmp_path, through=3)  # the checkpoint of round 3 needs round 3's file, and 4 may follow
    assert sorted(p.name for p in (tmp_path / "00007").iterdir()) == ["round-000003.npz", "round-000004.npz"]
    clientstate.drop_after(tmp_path, 3)  # resuming after round 3
    assert sorted(p.name for p in (tmp_path / "00007").iterdir()) == ["round-000003.npz"]


def test_where_clients_ran_is_filed_apart_and_a_resume_keeps_it_up_to_its_checkpoint(tmp_path):
    cfg = config_from_dict({})
    run = RunDir.create(tmp_path / "run")
    run.on_start(cfg, [])
    for rnd in (1, 2, 3):
        run.after_round({"round": rnd, "wall_s": 0.5, "placement": {"train": {"n1": [rnd], "n2": [0]}}})
    run.after_round({"round": 4, "wall_s": 0.5})  # no Ray node told where its clients ran
    assert [json.loads(line) for line in (run.path / ROUNDS).read_text().splitlines()] == \
        [{"round": rnd, "wall_s": 0.5} for rnd in (1, 2, 3, 4)]
    assert [json.loads(line) for line in (run.path / PLACEMENT).read_text().splitlines()] == \
        [{"round": rnd, "train": {"n1": [rnd], "n2": [0]}} for rnd in (1, 2, 3)]
    resumed = RunDir(run.path, resume_after=2)
    resumed.on_start(cfg, [])
    resumed.after_round({"round": 3, "placement": {"evaluate": {"n3": [1]}}})
    assert [json.loads(line) for line in (run.path / PLACEMENT).read_text().splitlines()] == \
        [{"round": 1, "train": {"n1": [1], "n2": [0]}}, {"round": 2, "train": {"n1": [2], "n2": [0]}},
         {"round": 3, "evaluate": {"n3": [1]}}]


def test_a_half_written_checkpoint_is_ignored(made):
    checkpoints = Checkpoints(made("depthfl"))
    (checkpoints.path / ".round-000004.tmp").mkdir(exist_ok=True)
    try:
        assert checkpoints.latest().round == 3
    finally:
        (checkpoints.path / ".round-000004.tmp").rmdir()


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("name", "damage", "why"), [
    ("arrays.npz", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "File is not a zip file"),
    ("arrays.npz", _flip_middle_byte, "Bad CRC-32 for file"),
    ("strategy.npz", Path.unlink, "No such file or directory"),
    ("state.json", lambda p: p.write_text('{"format": 1, "round": 2'), "Expecting ',' delimiter"),
])
def test_a_damaged_only_checkpoint_is_named_before_anything_starts(made, tmp_path, capsys, name, damage, why):
    run = copy_of(made("depthfl", 1, 3), tmp_path)  # killed in round 3: the checkpoint of round 2 is its only one
    path = run / "checkpoint" / "round-000002" / name
    damage(path)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert main(["resume", str(run)]) == 2  # in process, refused before Ray (or torch) would start
    err = _error(capsys)
    assert err.startswith(f"fl-ee: error: {path}: damaged checkpoint (") and why in err
    assert err.endswith(f"), and no earlier one to fall back to; remove {path.parent} and `fl-ee resume {run}` "
                        "starts the run over")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


@pytest.mark.e2e
def test_the_advice_for_a_damaged_only_checkpoint_ends_as_an_uninterrupted_run(made, tmp_path):
    run = copy_of(made("depthfl", 1, 3), tmp_path)
    arrays = run / "checkpoint" / "round-000002" / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:100])
    shutil.rmtree(arrays.parent)  # what the error line says to do
    resume_inprocess(run)
    _same_results(run, made("depthfl"))


@pytest.mark.e2e
@pytest.mark.parametrize("left_by", ["kill", "failed-removal"])
def test_a_damaged_checkpoint_falls_back_to_an_earlier_whole_one(made, tmp_path, monkeypatch, capsys, left_by):
    """Round 1's checkpoint outlived round 2's write, then round 2's was damaged: the run resumes from round 1.

    ``kill``: killed after round 2's checkpoint replaced round 1's, before round 1's was
    removed. ``failed-removal``: round 1's could not be removed (as ``rmtree(ignore_errors=True)``
    leaves a folder it may not delete), so its client files were kept too; killed in round 3.
    """
    real = shutil.rmtree

    def removing(path, *args, **kwargs):
        if Path(path).name == "round-000001" and Path(path).with_name("round-000002").is_dir():
            if left_by == "kill":
                raise Killed(2)
            return
        real(path, *args, **kwargs)

    run = tmp_path / "run"
    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr(shutil, "rmtree", removing)
        run_inprocess(run, [*FAST, "strategy.name=depthfl", "checkpoint_every=1"],
                      observers=[KillIn(3)] if left_by == "failed-removal" else [])
    assert sorted(p.name for p in (run / "checkpoint").glob("round-*")) == ["round-000001", "round-000002"]
    arrays = run / "checkpoint" / "round-000002" / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:100])
    assert _poison_stale_exits(run, 1) > 0  # the client files of later rounds must not be read either
    capsys.readouterr()

    resume_inprocess(run, seed=7)
    assert capsys.readouterr().err == (f"fl-ee: warning: {arrays}: damaged checkpoint (File is not a zip file); "
                                       "resuming from the checkpoint of round 1\n")
    _same_results(run, made("depthfl"))
    assert [p.name for p in (run / "checkpoint").iterdir() if p.name.startswith("round-")] == ["round-000003"]


# ----------------------------------------------------------------------------- refusals


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fl-ee: error: "), err
    return err


def test_run_refuses_a_folder_holding_other_files_and_leaves_them(tmp_path, capsys):
    (tmp_path / "config.toml").write_text("rounds = 2  # the user's own\n")
    assert main(["run", str(tmp_path / "config.toml"), "--out", str(tmp_path)]) == 2
    assert "is not empty and holds no fl-ee run; choose another --out" in _error(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]
    assert (tmp_path / "config.toml").read_text() == "rounds = 2  # the user's own\n"


def test_run_refuses_an_unfinished_run_naming_both_ways_forward(made, capsys):
    run = made("depthfl", 2, 1)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert main(["run", "--out", str(run)]) == 2
    err = _error(capsys)
    assert f"holds an unfinished run: continue it with `fl-ee resume {run}`, or choose another --out" in err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


@pytest.mark.parametrize(("argv", "needle"), [
    (["resume", "{missing}"], "no run directory at"),
    (["resume", "{empty}"], "is not an fl-ee run directory (no config.toml)"),
    (["resume", "{finished}"], "holds a finished run; there is nothing to resume"),
    (["resume", "{unfinished}", "--set", "rounds=5"], "rounds: cannot be changed on resume (only checkpoint_every"),
    (["resume", "{unfinished}", "--set", "seed=1"], "seed: cannot be changed on resume"),
    (["run", "--resume", "{unfinished}", "--out", "{empty}"], "--resume continues the run in DIR"),
    (["run", "quickstart", "--resume", "{unfinished}"], "drop CONFIG and --out"),
])
def test_resume_refusals_are_one_line_with_exit_2(tmp_path, capsys, made, argv, needle):
    unfinished = made("depthfl", 2, 1)
    (tmp_path / "empty").mkdir()
    dirs = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "unfinished": unfinished,
            "finished": made("depthfl")}
    before = (unfinished / "rounds.jsonl").read_text()
    assert main([a.format(**dirs) for a in argv]) == 2
    assert needle in _error(capsys)
    assert (unfinished / "rounds.jsonl").read_text() == before


def test_resume_refuses_a_config_edited_since_the_checkpoint(made, tmp_path):
    run = copy_of(made("depthfl", 1, 3), tmp_path)
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace("seed = 0", "seed = 3"))
    with pytest.raises(UserError, match="seed differs from the config the checkpoint was written with"):
        resume_inprocess(run)
    (run / "config.toml").write_text(text.replace("checkpoint_every = 1", "checkpoint_every = 5"))
    resume_inprocess(run)  # a key that changes no result may differ
    _same_results(run, made("depthfl"))


@pytest.mark.parametrize("failure", [RuntimeError("Ray did not start"), KeyboardInterrupt()])
def test_a_run_that_fails_before_round_1_leaves_nothing_behind(tmp_path, monkeypatch, capsys, failure):
    import sims.backend
    import sims.engine

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(sims.engine, "simulate", fail)
    monkeypatch.setattr(sims.backend, "start_ray", lambda cfg: lambda: None)  # the failure comes before Ray is needed
    assert main(["run", "--out", str(tmp_path / "new" / "run")]) in (1, 130)
    assert not (tmp_path / "new").exists()  # it made both folders, and removed both
    (tmp_path / "mine").mkdir()
    assert main(["run", "--out", str(tmp_path / "mine")]) in (1, 130)
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())  # the user's folder stays
    assert "no round finished" in capsys.readouterr().err or isinstance(failure, KeyboardInterrupt)
