"""``fl-ee check``, the config holes it closes, and the warnings of degenerate configs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fl_ee.cli import main
from fl_ee.config import config_to_toml, load_config
from fl_ee.errors import UserError
from fl_ee.plan import make_plan
from fl_ee.preflight import config_warnings, preflight
from sims.emulator import client_times, depth_bytes
from strategies import ClientInfo

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--set", "data.num_clients=6", "--set", "rounds=3"]


def _check(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_prints_the_plan_of_the_quickstart(capsys):
    code, out, err = _check(capsys, *SMALL)
    assert code == 0 and err == ""
    for text in ("config ok: digits", "Plan per tier", "iot", "phone", "laptop", "virtual clock (wait)"):
        assert text in out


def test_the_plan_is_the_run_cost_model():
    cfg = preflight(load_config(None, {"data.num_clients": 6, "rounds": 3}))
    plan = make_plan(cfg)
    assert [t.name for t in plan.tiers] == ["iot", "phone", "laptop"]
    assert sum(t.clients for t in plan.tiers) == 6
    from fl_ee.data import load_dataset, run_splits
    from fl_ee.models import EarlyExitNet
    from sims.tiers import assign_tiers

    data = load_dataset(cfg.data)
    model = EarlyExitNet(data.model_spec(cfg.model))
    tier_of = assign_tiers([t.share for t in cfg.tiers], 6, cfg.seed)
    clients = [ClientInfo(i, i, cfg.tiers[t].name, cfg.tiers[t].depth, len(s.train), len(s.test))
               for i, (t, s) in enumerate(zip(tier_of, run_splits(cfg)))]
    times = client_times(cfg, model, clients)
    size = depth_bytes(model, [2, 3, 4])
    for tier in plan.tiers:
        mine = [times[c.client_id].total_s for c in clients if c.tier == tier.name]
        assert tier.time_max_s == pytest.approx(max(mine))
        assert tier.down_bytes == tier.up_bytes == size[tier.depth]
    assert plan.tiers[0].down_bytes < plan.tiers[1].down_bytes < plan.tiers[2].down_bytes
    assert plan.sampled == pytest.approx(3.0)  # fraction_train 0.5 of 6
    assert plan.virtual_time_s > 0 and plan.round_max_s >= plan.round_p50_s > 0


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["rounds=x"], "rounds: expected int, got 'x'"),
        (["seed=-1"], "seed: must be >= 0"),
        (["strategy.fraction_evaluate=1.5"], "strategy.fraction_evaluate: must be in [0, 1]"),
        (["nope=1"], "nope: unknown key"),
        (["data.num_clients=100000"], "use at most 673 clients"),
        (["strategy.name=nosuch"], "strategy.name: unknown strategy 'nosuch'"),
    ],
)
def test_check_fails_in_one_line_with_exit_2(overrides, needle, capsys):
    code, out, err = _check(capsys, *[a for o in overrides for a in ("--set", o)])
    assert code == 2 and out == ""
    assert err.startswith("fl-ee: error:") and needle in err and err.count("\n") == 1, err


def test_a_bad_config_answers_before_torch_or_flower_is_imported():
    """``check`` and ``run`` load and validate the config before importing torch or Flower."""
    probe = ("import runpy, sys\n"
             "try:\n"
             "    runpy.run_module('fl_ee.cli', run_name='__main__', alter_sys=True)\n"
             "except SystemExit as exit:\n"
             "    heavy = sorted(m for m in ('torch', 'flwr', 'ray', 'matplotlib') if m in sys.modules)\n"
             "    print(exit.code, ','.join(heavy))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    for command in ("check", "run"):
        done = subprocess.run([sys.executable, "-c", probe, command, "--set", "rounds=x"], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=60)
        assert done.stdout.split("\n")[0] == "2 ", (command, done.stdout, done.stderr)  # nothing heavy loaded
        assert done.stderr == "fl-ee: error: rounds: expected int, got 'x'\n"


def test_argument_and_path_errors_answer_before_torch_or_flower_is_imported(tmp_path):
    """``sweep``, ``compare``, ``report``, ``resume`` and ``run`` refuse bad arguments and paths fast.

    Before torch, Flower, Ray, SciPy or matplotlib is imported: in well under 0.5 s.
    """
    run = tmp_path / "run"  # an unfinished run whose only checkpoint is truncated
    (run / "checkpoint" / "round-000001").mkdir(parents=True)
    (run / "config.toml").write_text(config_to_toml(load_config(None, {})))
    (run / "rounds.jsonl").write_text('{"round": 1}\n')
    (run / "checkpoint" / "round-000001" / "state.json").write_text('{"format": 1, "round": 1, "config": {}}')
    (run / "checkpoint" / "round-000001" / "arrays.npz").write_bytes(b"PK\x03\x04\x14\x00")
    (tmp_path / "notes.txt").write_text("mine")
    argvs = [["sweep", "--grid", "strategy.name=a,,b"], ["sweep", "--grid", "nope=1,2"], ["sweep", "--seeds", "999"],
             ["sweep", "--out", "notes.txt"], ["sweep", "--grid", "rounds=1,2", "--set", "rounds=3"],
             ["compare", "missing", "notes.txt"], ["report", "notes.txt"], ["report", "."], ["resume", "."],
             ["resume", "run", "--set", "rounds=5"], ["resume", "run"], ["run", "."], ["run", "--out", "x" * 5000]]
    probe = ("import json, sys\n"
             "from fl_ee.cli import main\n"
             "codes = [main(argv) for argv in json.loads(sys.argv[1])]\n"
             "print(codes, sorted(m for m in ('torch', 'flwr', 'ray', 'scipy', 'matplotlib') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    done = subprocess.run([sys.executable, "-c", probe, json.dumps(argvs)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)
    assert done.stdout == f"{[2] * len(argvs)} []\n", done.stderr  # every one refused, nothing heavy imported
    lines = done.stderr.splitlines()
    assert len(lines) == len(argvs) and all(line.startswith("fl-ee: error: ") for line in lines), lines
    assert lines[-3].startswith(f"fl-ee: error: {Path('run', 'checkpoint', 'round-000001', 'arrays.npz')}: damaged "
                                "checkpoint (File is not a zip file), and no earlier one to fall back to")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]  # nothing made


def test_a_directory_or_a_path_too_long_is_one_line(tmp_path, capsys):
    assert main(["run", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"fl-ee: error: {tmp_path} is a directory; give a TOML file or a preset name "
                                       "(fl-ee list presets)\n")
    assert main(["run", "--out", "x" * 5000]) == 2
    assert capsys.readouterr().err == (f"fl-ee: error: --out: {'x' * 40}...{'x' * 20} (5000 characters): "
                                       "File name too long\n")
    code, out, err = _check(capsys, "--set", "data.name=fashion-mnist", "--set", f"data.root={tmp_path / ('r' * 5000)}")
    assert code == 2 and out == "" and err.count("\n") == 1 and len(err) < 200
    assert err.startswith(f"fl-ee: error: data.root: {str(tmp_path)[:40]}") and err.endswith(
        "/FashionMNIST/raw (" + str(len(str(tmp_path)) + 5018) + " characters): File name too long\n")


def test_an_error_is_one_line_whatever_its_path_or_argument_holds(capsys):
    assert main(["report", "runs/a\nb\u2028c"]) == 2
    assert capsys.readouterr().err == "fl-ee: error: no run directory at runs/a\\nb\\u2028c\n"
    with pytest.raises(SystemExit) as exit:  # argparse's own errors have the same form
        main(["compare"])
    assert exit.value.code == 2 and capsys.readouterr().err == (
        "fl-ee: error: the following arguments are required: RUN_DIR|SWEEP_ROOT (see fl-ee compare --help)\n")


def test_seed_must_not_be_negative():
    with pytest.raises(UserError, match="seed: must be >= 0"):
        load_config(None, {"seed": -1})
    assert load_config(None, {"seed": 2**40}).seed == 2**40


def test_a_tier_without_clients_is_a_warning(capsys):
    code, _, err = _check(capsys, "--set", "data.num_clients=6", "--set", "tiers.0.share=0.05",
                          "--set", "tiers.1.share=0.65")
    assert code == 0
    assert err == ("fl-ee: warning: tier 'iot' gets no client (share 0.05 of 6 clients); "
                   "raise tiers.0.share or data.num_clients\n")


def test_tiers_never_online_are_warnings():
    cfg = load_config(None, {"tiers.0.availability": 0})
    assert config_warnings(cfg) == ["tier 'iot' has availability 0: its clients will never train; "
                                    "raise tiers.0.availability"]
    cfg = load_config(None, {f"tiers.{i}.availability": 0 for i in range(3)})
    assert config_warnings(cfg) == ["every tier has availability 0: no client will ever train, "
                                    "so the run will not be a result"]
    assert config_warnings(load_config(None)) == []


def test_check_with_no_client_evaluation_says_so(capsys):
    code, out, _ = _check(capsys, *SMALL, "--set", "strategy.fraction_evaluate=0")
    assert code == 0 and "no client evaluates (global model only)" in " ".join(out.split())


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"data.num_clients": 600, "data.alpha": 0.01}, "lower data.num_clients or raise data.alpha"),
        ({"data.partitioner": "shards", "data.num_clients": 600}, "lower data.shards_per_client or data.num_clients"),
        ({"data.num_clients": 1000}, "use at most 673 clients"),
    ],
)
def test_split_failures_say_what_to_change(overrides, needle):
    with pytest.raises(UserError, match=needle) as info:
        preflight(load_config(None, overrides))
    assert info.value.key == "data.num_clients"


def test_a_run_in_which_no_client_trained_warns_and_says_so_in_its_summary(tmp_path, capsys):
    from inprocess import run_inprocess

    off = [f"tiers.{i}.availability=0" for i in range(3)]
    _, summary = run_inprocess(tmp_path / "idle", ["rounds=2", "data.num_clients=4", "eval_every=2", *off])
    err = capsys.readouterr().err
    assert "fl-ee: warning: every tier has availability 0" in err
    assert "fl-ee: warning: no client trained in any of the 2 rounds" in err
    written = json.loads((tmp_path / "idle" / "summary.json").read_text())
    assert written["warnings"] == summary["warnings"] and "this run is not a result" in summary["warnings"][0]


def test_rounds_without_training_are_listed():
    from fl_ee.summary import run_warnings

    def clock(ok: int) -> dict:
        return {"by_tier": {"a": {"sampled": 2, "ok": ok}, "b": {"sampled": 0, "ok": 0}}}

    assert run_warnings([clock(1), clock(2)]) == []
    assert run_warnings([clock(0), clock(0), clock(1), clock(0)]) == [
        "no client trained in 3 of 4 rounds (round 1-2, 4): the global model did not move in them"]
