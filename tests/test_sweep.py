"""``fl-ee sweep`` (planning, bad input, resumption, ``sweep.json``) and ``fl-ee compare`` over settings."""

import dataclasses
import hashlib
import io
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.collections import LineCollection
from rich.console import Console

from fl_ee.cli import main
from fl_ee.core.config import config_to_toml, load_config
from fl_ee.core.errors import UserError
from fl_ee.results.groups import expand, group_runs, load_settings
from fl_ee.results.observers import Observer
from fl_ee.results.rundir import load_run
from fl_ee.results.stats import PAIRED, WELCH
from fl_ee.results.sweepplots import accuracy_band, metric_intervals
from fl_ee.studies.sweep import (
    SWEEP_JSON,
    Job,
    check_existing,
    plan,
    run_sweep,
    setting_name,
    setting_warnings,
    split_values,
    write_sweep_json,
)
from inprocess import resume_inprocess, run_inprocess, sets

TINY = ["rounds=2", "eval_every=1", "data.num_clients=3", "strategy.fraction_train=1.0"]
GRID = ["strategy.name=depthfl,exclusive"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, message", [
    (["--grid", "strategy.nme=depthfl"], "strategy.nme: unknown key (in setting strategy.nme=depthfl, seed 0)"),
    (["--grid", "tiers.0.depth=2,7"],
     "tiers.0.depth: must be in 1..4 (the model has 4 exits) (in setting tiers.0.depth=7, seed 0)"),
    (["--grid", "strategy.name="], "--grid strategy.name: empty grid"),
    (["--grid", "strategy.name"], "expected KEY=V1,V2"),
    (["--grid", "data.alpha=0.1,0.10"], "--grid data.alpha: the value 0.10 is given twice in '0.1,0.10'"),
    (["--grid", "strategy.name=depthfl,,exclusive"],
     "--grid strategy.name: value 2 of 'depthfl,,exclusive' is empty; write \"\" for an empty string"),
    (["--grid", "strategy.name=depthfl,"], "--grid strategy.name: value 2 of 'depthfl,' is empty"),
    (["--grid", "rounds=1,2", "--set", "rounds=3"], "--grid rounds: given in both --grid and --set; drop one"),
    (["--seeds", "100000"], "--seeds: must be in 1..100"),
    (["--seed-list", ",".join(map(str, range(101)))], "--seed-list: 101 seeds; a sweep runs at most 100"),
    (["--grid", f"data.alpha={','.join(str(a) for a in range(1, 12))}", "--grid",
      f"training.lr={','.join(str(r / 100) for r in range(1, 11))}", "--seed-list", ",".join(map(str, range(10)))],
     "--grid: 1100 runs (11 x 10 values x 10 seeds); a sweep runs at most 1000: split it into several"),
    (["--grid", "seed=1,2"], "--grid seed: the seeds of a sweep come from --seeds"),
    (["--set", "seed=4"], "--set seed: the seeds of a sweep come from --seeds"),
    (["--seeds", "0"], "--seeds: must be in 1..100"),
    (["--seed-list", "1,x"], "--seed-list: expected whole numbers"),
    (["--jobs", "0"], "--jobs: must be at least 1"),
])
def test_bad_input_fails_in_one_line_before_any_run(argv, message, tmp_path, capsys):
    out = tmp_path / "sweep"
    seeds = [] if any(a.startswith("--seed") for a in argv) else ["--seeds", "1"]
    assert main(["sweep", *seeds, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fl-ee: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_config_warnings_are_given_once_per_setting_and_name_it(tmp_path, capsys):
    never = ("training.kd_warmup_rounds = 8 is past the last round (3): distillation (last-exit) never starts, so "
             "the run trains as with training.distillation = none")
    jobs = plan(None, ["rounds=3", "data.num_clients=3"], ["training.distillation=none,last-exit"], [0, 1], tmp_path)
    assert capsys.readouterr().err == ""  # not once per seed while planning
    assert setting_warnings({j.setting: j.cfg for j in jobs}) == [
        f"{never} (in setting training.distillation=last-exit)"]  # the two settings are one run twice
    both = {name: load_config(None, {"rounds": 3, "strategy.name": name}) for name in ("depthfl", "exclusive")}
    assert setting_warnings(both) == [f"{never} (in every setting)"]
    assert setting_warnings({"base": both["depthfl"]}) == [never]
    assert setting_warnings({"a": load_config(None, {"rounds": 8}), "b": load_config(None)}) == []


def test_a_file_is_no_sweep_root(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "sweep"):
        assert main(["sweep", "--seeds", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"fl-ee: error: {tmp_path / 'notes.txt'} is not a directory; choose another --out\n"
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_values_split_at_top_level_commas_only():
    assert split_values("[1,2],[1, 3] , {a = 1, b = [2,3]},'x,y',\"p\\\",q\",z") == [
        "[1,2]", "[1, 3]", "{a = 1, b = [2,3]}", "'x,y'", '"p\\",q"', "z"]
    assert split_values("a") == ["a"] and split_values("a,,b") == ["a", "", "b"]


def test_list_values_can_be_swept(tmp_path):
    two_deep = [*TINY, "tiers.1.depth=2", "tiers.2.depth=2"]  # every tier fits a model of two exits
    jobs = plan(None, two_deep, ["model.exits=[1,2],[1, 3]"], [0], tmp_path)
    assert [(j.setting, j.cfg.model.exits) for j in jobs] == [("model.exits=[1%2C2]", [1, 2]),
                                                              ("model.exits=[1%2C%203]", [1, 3])]
    with pytest.raises(UserError, match=r"--grid model.exits: the value \[1, 2\] is given twice"):
        plan(None, two_deep, ["model.exits=[1,2],[1, 2]"], [0], tmp_path)


def test_long_values_get_short_stable_folder_names(tmp_path):
    long = "x" * 300
    jobs = plan(None, TINY, [f"tiers.0.name={long},y"], [0], tmp_path)
    digest = hashlib.sha256(long.encode()).hexdigest()[:8]
    assert [j.setting for j in jobs] == [f"tiers.0.name={'x' * 31}~{digest}", "tiers.0.name=y"]
    assert jobs[0].cfg.tiers[0].name == long
    jobs[0].path.mkdir(parents=True)  # a name the file system takes
    # several long values: the whole name is cut too, and stays unique
    names = [setting_name({f"tiers.{i}.name": "v" * 60 for i in range(5)} | {"data.alpha": a}) for a in "12"]
    assert all(len(n) == 200 for n in names) and names[0] != names[1]
    assert names[0].startswith(f"tiers.0.name={'v' * 31}~{hashlib.sha256(b'v' * 60).hexdigest()[:8]},tiers.1.name=")
    assert names == [setting_name({f"tiers.{i}.name": "v" * 60 for i in range(5)} | {"data.alpha": a}) for a in "12"]


def test_a_settings_checks_run_once_and_each_seed_gets_its_split(tmp_path, capsys):
    # a tier too small for 3 clients: a config warning, said once for the sweep (not per seed, not while planning)
    small = [*TINY, "tiers.0.share=0.1", "tiers.1.share=0.4", "tiers.2.share=0.5"]
    jobs = plan(None, small, GRID, [0, 1, 2], tmp_path)
    assert capsys.readouterr().err == ""
    assert setting_warnings({j.setting: j.cfg for j in jobs}) == [
        "tier 'iot' gets no client (share 0.1 of 3 clients); raise tiers.0.share or data.num_clients "
        "(in every setting)",
        "training.kd_warmup_rounds = 8 is past the last round (2): distillation (last-exit) never starts, so the "
        "run trains as with training.distillation = none (in every setting)"]
    assert [(j.seed, j.cfg.seed) for j in jobs] == [(s, s) for s in (0, 1, 2)] * 2
    assert jobs[1].cfg == jobs[0].cfg.model_copy(update={"seed": 1})  # the first seed's checked config, reseeded


def test_a_sweep_refuses_a_folder_holding_another_config(tmp_path):
    jobs = plan(None, TINY, GRID, [0], tmp_path)
    assert [(j.setting, j.seed, j.path.relative_to(tmp_path).as_posix()) for j in jobs] == [
        ("strategy.name=depthfl", 0, "strategy.name=depthfl/seed-0"),
        ("strategy.name=exclusive", 0, "strategy.name=exclusive/seed-0")]
    jobs[0].path.mkdir(parents=True)  # a run of this config, as far as the sweep looks
    (jobs[0].path / "config.toml").write_text(config_to_toml(jobs[0].cfg))
    (jobs[0].path / "rounds.jsonl").write_text("")
    check_existing(jobs[0])
    longer = dataclasses.replace(jobs[0], cfg=jobs[0].cfg.model_copy(update={"rounds": 3}))
    with pytest.raises(UserError, match=r"holds a run whose rounds differs from this sweep's; choose another --out"):
        check_existing(longer)
    jobs[1].path.mkdir(parents=True)
    (jobs[1].path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="in the way of this sweep's run"):
        check_existing(jobs[1])


# --------------------------------------------------------------------------- resumption


class KilledAfterRound(Observer):
    """Stops the run (as a kill would) once round ``n`` is written and checkpointed."""

    def __init__(self, n: int) -> None:
        self.n = n

    def after_state(self, state, strategy) -> None:
        if state.round == self.n:
            raise KeyboardInterrupt


class Ended:
    """A run that has ended, as a finished ``Popen`` reports it."""

    def __init__(self, code: int) -> None:
        self.code = code

    def poll(self) -> int:
        return self.code

    def send_signal(self, sig: int) -> None:
        pass


def _interrupted(job) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_inprocess(job.path, job.overrides, observers=[KilledAfterRound(1)])
    assert load_run(job.path).summary is None and len(load_run(job.path).rounds) == 1


@pytest.mark.e2e  # five tiny runs in process: seconds
def test_a_sweep_runs_only_what_is_unfinished_and_resumes_the_interrupted_run(tmp_path):
    jobs = plan(None, TINY, GRID, [0, 1], tmp_path)
    run_inprocess(jobs[0].path, jobs[0].overrides)  # depthfl, seed 0: finished
    _interrupted(jobs[1])  # depthfl, seed 1: killed after round 1
    launched = []

    def launch(job, resume):  # the real server loop and ClientApp, in process
        launched.append((job.setting, job.seed, resume))
        if resume:
            resume_inprocess(job.path)
        else:
            run_inprocess(job.path, job.overrides)
        return Ended(0)

    before = (jobs[0].path / "summary.json").stat().st_mtime_ns
    failed = run_sweep(jobs, tmp_path, {}, launch, 1, Console(file=io.StringIO()))
    assert failed == {}
    assert launched == [("strategy.name=depthfl", 1, True), ("strategy.name=exclusive", 0, False),
                        ("strategy.name=exclusive", 1, False)]
    assert (jobs[0].path / "summary.json").stat().st_mtime_ns == before  # the finished run was left alone
    sweep = json.loads((tmp_path / SWEEP_JSON).read_text())
    assert sweep["runs"] == {"total": 4, "finished": 4, "failed": {}}
    for job in jobs:
        mean = sweep["settings"][job.setting]["metrics"]["mean"]
        assert mean["n"] == 2 and mean["values"][str(job.seed)] == load_run(job.path).personalised["mean"]
    assert set(sweep["settings"]["strategy.name=depthfl"]["metrics"]) >= {
        "mean", "worst10", "jain", "tier_gap", "adaptive_accuracy", "expected_flops", "global_exit1",
        "global_exit4", "virtual_time_s", "time_to_accuracy_s"}


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path):
    jobs = plan(None, TINY, GRID, [0], tmp_path)
    for job in jobs:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        job.log.write_text("fl-ee: error: simulation failed: boom\n")
    failed = run_sweep(jobs, tmp_path, {}, lambda job, resume: Ended(1), 1, Console(file=io.StringIO()))
    assert failed == {f"{j.setting}/seed-0": "exit 1: fl-ee: error: simulation failed: boom" for j in jobs}
    assert json.loads((tmp_path / SWEEP_JSON).read_text())["runs"]["failed"] == failed


class Running:
    """A run that goes on until it is asked to stop; Ctrl-C reaches the sweep while it looks at it."""

    def __init__(self) -> None:
        self.signals, self.polls = [], 0

    def poll(self):
        self.polls += 1
        if self.polls == 2:
            raise KeyboardInterrupt
        return 130 if self.signals else None

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)


def test_ctrl_c_stops_the_running_runs_and_the_sweep(tmp_path):
    jobs = plan(None, TINY, GRID, [0], tmp_path)
    started = []

    def launch(job, resume):
        started.append(Running())
        return started[-1]

    console = Console(file=io.StringIO())
    with pytest.raises(KeyboardInterrupt):
        run_sweep(jobs, tmp_path, {}, launch, 1, console)
    assert len(started) == 1 and started[0].signals == [signal.SIGINT]  # asked once, as Ctrl-C would; it stopped
    assert "sweep stopped; 0 of 2 runs finished, the same command continues it" in console.file.getvalue()


# ------------------------------------------------------------------- grouping and compare


def _fake_run(path: Path, strategy: str, seed: int, mean: float, jain: float) -> Path:
    """A finished run directory holding the given figures (the files a run writes, by hand)."""
    path.mkdir(parents=True)
    cfg = load_config(None, {"strategy.name": strategy, "seed": seed})
    (path / "config.toml").write_text(config_to_toml(cfg))
    record = {"round": 1, "evaluate": {"personalised": {"mean": mean}, "global": {"by_exit": {"4": mean - 0.1}}}}
    (path / "rounds.jsonl").write_text(json.dumps(record) + "\n")
    summary = {"accuracy": {"personalised": {"mean": mean, "adaptive_accuracy": mean}},
               "fairness": {"jain": jain, "worst10": mean / 2, "gini": 0.1, "tier_gap": 0.05},
               "efficiency": {"expected_flops": 1e6}, "virtual_time_s": 100.0, "time_to_accuracy_s": None}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.fixture
def settings_dirs(tmp_path) -> list[Path]:
    means = {"depthfl": [0.70, 0.72, 0.74], "exclusive": [0.60, 0.63, 0.66]}
    jains = {"depthfl": [0.90, 0.80, 0.85], "exclusive": [0.86, 0.84, 0.82]}
    return [_fake_run(tmp_path / f"{name}-{seed}", name, seed, means[name][seed], jains[name][seed])
            for name in means for seed in range(3)]


def test_run_dirs_of_one_config_but_the_seed_form_a_setting(settings_dirs):
    settings = group_runs([load_run(p) for p in reversed(settings_dirs)])
    assert [(s.name, s.seeds) for s in settings] == [("strategy.name=exclusive", [0, 1, 2]),
                                                     ("strategy.name=depthfl", [0, 1, 2])]
    assert settings[1].values("mean") == {0: 0.70, 1: 0.72, 2: 0.74}
    assert expand([settings_dirs[0], settings_dirs[0]]) == [settings_dirs[0].resolve()]


def test_compare_tests_each_setting_against_the_baseline(settings_dirs, capsys):
    assert main(["compare", *map(str, settings_dirs), "--baseline", "depthfl", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["baseline"] == "strategy.name=depthfl"
    depthfl, exclusive = (data["settings"][f"strategy.name={n}"]["metrics"] for n in ("depthfl", "exclusive"))
    # depthfl: mean 0.72, s 0.02, CI 0.72 -/+ 4.302653 * 0.02 / sqrt(3) = 0.72 -/+ 0.049683
    assert depthfl["mean"]["mean"] == pytest.approx(0.72) and depthfl["mean"]["std"] == pytest.approx(0.02)
    assert depthfl["mean"]["ci95"] == pytest.approx([0.72 - 0.049683, 0.72 + 0.049683], abs=1e-6)
    # paired by seed: d = [-0.10, -0.09, -0.08], t = -0.09 / (0.01 / sqrt(3)) = -15.588, df 2
    test = exclusive["mean"]["vs_baseline"]
    assert test["test"] == PAIRED and test["df"] == 2 and test["t"] == pytest.approx(-9 * 3**0.5, rel=1e-6)
    assert test["significant"] and test["p"] == pytest.approx(0.00409, abs=1e-5)
    # Jain: d = [-0.04, 0.04, -0.03], mean -0.01: noise
    assert not exclusive["jain"]["vs_baseline"]["significant"]
    assert data["best"]["mean"] == "strategy.name=depthfl" and data["best"]["jain"] is None
    assert exclusive["virtual_time_s"]["vs_baseline"]["p"] == 1.0  # equal everywhere


def test_compare_says_which_test_and_welch_where_seeds_differ(settings_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    extra = _fake_run(tmp_path / "exclusive-7", "exclusive", 7, 0.61, 0.8)
    assert main(["compare", *map(str, settings_dirs), str(extra), "--baseline", "strategy.name=depthfl"]) == 0
    out = capsys.readouterr().out
    assert "Settings compared: mean ± 95% CI over seeds" in out and "strategy.name=depthfl (baseline)" in out
    assert WELCH in out and "0,1,2,7" in out
    assert "72.0 ± 5.0" in out  # 0.72 -/+ 0.0497, in %
    assert main(["compare", *map(str, settings_dirs), "--baseline", "fedavg"]) == 2
    assert "--baseline: 'fedavg' is no setting" in capsys.readouterr().err


def test_compare_leaves_out_an_unfinished_run_with_a_note(settings_dirs, tmp_path, capsys):
    unfinished = Path(shutil.copytree(settings_dirs[1], tmp_path / "unfinished"))
    (unfinished / "summary.json").unlink()
    assert main(["compare", str(settings_dirs[0]), str(unfinished), str(settings_dirs[3]), "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == (f"fl-ee: warning: {unfinished}: unfinished run (no summary.json) left out; "
                   f"`fl-ee resume {unfinished}` finishes it\n")
    assert {name: s["seeds"] for name, s in json.loads(out)["settings"].items()} == {
        "strategy.name=depthfl": [0], "strategy.name=exclusive": [0]}
    assert main(["compare", str(settings_dirs[0]), str(unfinished)]) == 2
    assert capsys.readouterr().err.splitlines()[1] == "fl-ee: error: compare needs at least two finished runs"


def test_compare_counts_a_seed_given_twice_once_and_names_both(settings_dirs, tmp_path, capsys):
    again = Path(shutil.copytree(settings_dirs[0], tmp_path / "again"))  # the same config and seed
    assert main(["compare", *map(str, settings_dirs[:2]), str(again), *map(str, settings_dirs[3:5]), "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == (f"fl-ee: warning: {settings_dirs[0]} and {again} are both seed 0 of one setting; only "
                   f"{settings_dirs[0]} is counted\n")
    depthfl = json.loads(out)["settings"]["strategy.name=depthfl"]
    assert depthfl["seeds"] == [0, 1] and depthfl["metrics"]["mean"]["n"] == 2
    assert depthfl["metrics"]["mean"]["mean"] == pytest.approx((0.70 + 0.72) / 2)
    assert main(["compare", str(settings_dirs[0]), str(again)]) == 2  # a run and its copy: nothing to compare
    assert capsys.readouterr().err.splitlines()[1] == "fl-ee: error: compare needs at least two finished runs"


def test_only_settings_of_the_same_name_in_two_sweeps_are_told_apart_by_folder(tmp_path, capsys):
    sweeps = [tmp_path / "a" / "strategy.name=depthfl", tmp_path / "b" / "strategy.name=depthfl",
              tmp_path / "b" / "strategy.name=exclusive"]
    for folder, (name, mean) in zip(sweeps, [("depthfl", 0.7), ("depthfl", 0.7), ("exclusive", 0.6)]):
        _fake_run(folder / "seed-0", name, 0, mean, 0.9)
    other = load_config(None, {"strategy.name": "depthfl", "rounds": 7})  # sweep b set another value beside its grid
    (sweeps[1] / "seed-0" / "config.toml").write_text(config_to_toml(other))
    names = [s.name for s in group_runs([load_run(folder / "seed-0") for folder in sweeps])]
    assert names == ["strategy.name=depthfl (a/strategy.name=depthfl)",
                     "strategy.name=depthfl (b/strategy.name=depthfl)", "strategy.name=exclusive"]
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--baseline", "exclusive", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["baseline"] == "strategy.name=exclusive"


# --------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_the_sweep_command_resumes_only_the_interrupted_run(tmp_path):
    """``fl-ee sweep`` in a subprocess, over a root where one run finished and one was killed after round 1."""
    tiny = [*TINY, "simulation.client_cpus=1"]
    jobs = plan(None, tiny, ["strategy.name=depthfl"], [0, 1], tmp_path)
    run_inprocess(jobs[0].path, jobs[0].overrides)
    _interrupted(jobs[1])
    argv = [sys.executable, "-m", "fl_ee.cli", "sweep", "--grid", "strategy.name=depthfl", "--seed-list", "0,1",
            *sets(tiny), "--out", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 runs in" in done.stderr and "1 finished before, 1 to run" in done.stderr
    log = (tmp_path / "strategy.name=depthfl" / "seed-1.log").read_text()
    assert log.startswith("$ ") and f"resume {jobs[1].path}" in log.splitlines()[0]
    assert not (tmp_path / "strategy.name=depthfl" / "seed-0.log").exists()
    sweep = json.loads((tmp_path / SWEEP_JSON).read_text())
    assert sweep["runs"]["finished"] == 2 and sweep["settings"]["strategy.name=depthfl"]["seeds"] == [0, 1]
    assert "Settings compared" in done.stdout


@pytest.mark.e2e
def test_report_of_a_sweep_root_prints_the_settings_and_draws_their_plots(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    means = {"depthfl": [0.70, 0.72, 0.74], "exclusive": [0.60, 0.63, 0.66]}
    for name, values in means.items():
        for seed, mean in enumerate(values):
            _fake_run(tmp_path / f"strategy.name={name}" / f"seed-{seed}", name, seed, mean, 0.8)
    assert main(["report", str(tmp_path), "--plots"]) == 0
    out, err = capsys.readouterr()
    assert "strategy.name=depthfl (baseline)" in out and "paired t-test" in out
    assert "plots in" in err and "skipped" not in err
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["accuracy_rounds.png", "metrics.png"]
    assert main(["report", str(tmp_path), "--json"]) == 2  # no sweep.json: not made by fl-ee sweep
    assert capsys.readouterr().err.strip() == f"fl-ee: error: {tmp_path} has no sweep.json"


def test_sweep_plots_name_the_settings_in_the_order_of_the_table_and_keep_intervals_in_range(tmp_path, capsys,
                                                                                                monkeypatch):
    """Two seeds far apart: the 95% intervals span more than 0-100%; the grid lists exclusive first."""
    monkeypatch.setenv("COLUMNS", "200")
    means = {"exclusive": [0.60, 0.95], "depthfl": [0.70, 0.72]}
    jobs = []
    for strategy, values in means.items():
        for seed, mean in enumerate(values):
            path = _fake_run(tmp_path / f"strategy.name={strategy}" / f"seed-{seed}", strategy, seed, mean, 0.8)
            jobs.append(Job(f"strategy.name={strategy}", seed, None, (), load_run(path).config, path))
    write_sweep_json(tmp_path, jobs, {}, {})
    names = ["strategy.name=exclusive", "strategy.name=depthfl"]  # not the folders' alphabetical order
    settings = load_settings([tmp_path])
    assert [s.name for s in settings] == names
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.index("strategy.name=exclusive (baseline)") < out.index("strategy.name=depthfl")

    fig = metric_intervals(settings)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    mean = panels["personalised mean % (higher is better)"]
    labelled = [ax for ax in panels.values() if ax.get_xticklabels()]
    assert len(labelled) == 4 and all([t.get_text() for t in ax.get_xticklabels()] == names for ax in labelled)
    bars = [segment[:, 1] for c in mean.collections if isinstance(c, LineCollection) for segment in c.get_segments()]
    # exclusive: 77.5 -/+ 12.706 * 24.75 (t of 1 df): cut at 0 and 100; depthfl: 71 -/+ 12.706 * 1.0
    assert [(low, high) for low, high in bars] == [(0.0, 100.0), pytest.approx((58.29, 83.71), abs=0.01)]
    assert 0 <= mean.get_ylim()[0] and mean.get_ylim()[1] <= 100
    assert fig.get_suptitle().endswith("; intervals cut where they pass the metric's range")
    jain = panels["Jain's index (higher is better)"]
    assert 0 <= jain.get_ylim()[0] and jain.get_ylim()[1] <= 1

    band = accuracy_band(settings).axes[0]
    extents = [path.vertices[:, 1] for c in band.collections for path in c.get_paths()]
    assert extents and all(0 <= y.min() and y.max() <= 100 for y in extents)
    assert min(y.min() for y in extents) == 0 and max(y.max() for y in extents) == 100  # exclusive's, cut
