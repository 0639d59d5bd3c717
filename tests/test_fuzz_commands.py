"""Property: ``sweep``, ``compare``, ``report`` and ``resume`` answer any arguments: exit 0, or 2 and one error line.

Hypothesis draws each command's arguments from right and wrong pieces (grid items with
list values, empty values, long values and stray quotes; seed counts; paths to finished,
unfinished, duplicated and damaged runs, sweep roots, files, missing and over-long
paths; ``--set`` of keys a resume may and may not change) and runs the command in
process. Never a traceback; warnings are ``fl-ee: warning:`` lines, an error is the last
line and the only ``fl-ee: error:`` one. No example starts a simulation: every config a
sweep or a resume would run names Fashion-MNIST under a folder that does not hold it, so
each is refused at its preflight, after all of its arguments were checked.
"""

import io
import json
import shutil
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sweep import _fake_run

from fl_ee.cli import main
from fl_ee.core.atomic import write_npz
from fl_ee.core.config import config_to_toml, load_config
from fl_ee.federation.checkpoint import resumable_config

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# argv holds no NUL and no surrogate but those of undecodable bytes (U+DC80-U+DCFF)
texts = st.text(st.one_of(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                          st.sampled_from("\udc80\udcff")), max_size=6)


def answer(argv: list[str]) -> None:
    """Run ``fl-ee ARGV`` in process and check that it answered cleanly."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's own errors
            code = exit.code
        except BaseException:
            raise AssertionError(f"{argv}\n{traceback.format_exc()}") from None
    lines = err.getvalue().splitlines()
    assert "Traceback" not in out.getvalue() + err.getvalue(), (argv, err.getvalue())
    warnings = lines if code == 0 else lines[:-1]
    assert all(line.startswith("fl-ee: warning: ") for line in warnings), (argv, lines)
    if code != 0:
        assert code == 2 and lines and lines[-1].startswith("fl-ee: error: "), (argv, code, lines)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """Run directories, sweep roots and other paths the commands get, by name."""
    root = tmp_path_factory.mktemp("fuzz")
    nodata = {"data.name": "fashion-mnist", "data.root": str(root / "nodata")}
    made = {
        "finished": _fake_run(root / "finished", "depthfl", 0, 0.7, 0.9),
        "finished-seed1": _fake_run(root / "finished-seed1", "depthfl", 1, 0.72, 0.8),
        "other": _fake_run(root / "other", "exclusive", 0, 0.6, 0.85),
        "sweep": root / "sweep",
    }
    made["copy"] = Path(shutil.copytree(made["finished"], root / "copy"))
    for seed in (0, 1):
        _fake_run(made["sweep"] / "strategy.name=depthfl" / f"seed-{seed}", "depthfl", seed, 0.7, 0.9)
    (made["sweep"] / "strategy.name=depthfl" / "seed-1" / "summary.json").unlink()  # one unfinished
    for name, file, content in [("summary-list", "summary.json", b"[]"), ("rounds-binary", "rounds.jsonl", b"\xff\x00"),
                                ("config-binary", "config.toml", b"\xfe\xff")]:
        made[name] = Path(shutil.copytree(made["finished"], root / name))
        (made[name] / file).write_bytes(content)
    # unfinished runs of a config whose data is missing: no checkpoint, a damaged one, a damaged and a whole one
    cfg = load_config(None, nodata)
    for name, checkpoints in [("unfinished", []), ("damaged", [1]), ("fallback", [1, 2])]:
        run = made[name] = root / name
        run.mkdir()
        (run / "config.toml").write_text(config_to_toml(cfg))
        (run / "rounds.jsonl").write_text("".join(json.dumps({"round": r}) + "\n" for r in (1, 2)))
        for rnd in checkpoints:
            folder = run / "checkpoint" / f"round-{rnd:06d}"
            folder.mkdir(parents=True)
            state = {"format": 1, "round": rnd, "config": resumable_config(cfg)}
            (folder / "state.json").write_text(json.dumps(state))
            write_npz(folder / "arrays.npz", {"stages.0.w": np.zeros(2, np.float32)})
            write_npz(folder / "strategy.npz", {})
        if checkpoints:
            (run / "checkpoint" / f"round-{checkpoints[-1]:06d}" / "arrays.npz").write_bytes(b"PK\x03\x04")
    (root / "notes.txt").write_text("mine")
    (root / "empty").mkdir()
    found = {name: str(path) for name, path in made.items()}
    return {**found, "file": str(root / "notes.txt"), "empty": str(root / "empty"), "missing": str(root / "missing"),
            "long": str(root / ("x" * 5000)), "new": str(root / "new" / "sweep"), "nodata": str(root / "nodata")}


def a_path(names: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(names)


# ----------------------------------------------------------------------------------- sweep

GRID_KEYS = ["strategy.name", "model.exits", "tiers.0.name", "tiers.1.depth", "rounds", "training.lr", "seed",
             "nope", "", " rounds "]
VALUES = ["depthfl", "exclusive", "[1,2]", "[1, 3]", "[2,4]", "", "'a,b'", '"x', "[1,", "1", "2", "0.1", "0.10",
          "x" * 300, "true"]


@st.composite
def grid_items(draw) -> str:
    key = draw(st.sampled_from(GRID_KEYS))
    values = draw(st.lists(st.one_of(st.sampled_from(VALUES), texts), max_size=4))
    return f"{key}={','.join(values)}" if draw(st.integers(0, 9)) else draw(texts)


@st.composite
def sweep_argv(draw, paths: dict[str, str]) -> list[str]:
    argv = ["sweep"]
    config = draw(st.sampled_from([None, "quickstart", "nope", paths["file"], paths["empty"], paths["long"]]))
    argv += [config] if config else []
    for item in draw(st.lists(grid_items(), max_size=3)):
        argv += ["--grid", item]
    for item in draw(st.lists(st.sampled_from(["rounds=2", "rounds=3", "nope=1", "strategy.name=x", "seed=1",
                                               "data.num_clients=4", "tiers.1.depth=2", "tiers.2.depth=2"]),
                              max_size=2)):
        argv += ["--set", item]
    seeds = draw(st.integers(0, 2))
    if seeds == 1:
        argv += ["--seeds", str(draw(st.sampled_from([-1, 0, 1, 3, 100, 101, 100000])))]
    elif seeds == 2:
        argv += ["--seed-list", draw(st.one_of(st.sampled_from(["0,1", "1,1", "-1", "x", ",", "0,,2"]), texts))]
    argv += ["--out", draw(a_path([paths[n] for n in ("new", "file", "finished", "sweep", "empty", "long")]))]
    if draw(st.booleans()):
        argv += ["--jobs", str(draw(st.integers(-1, 3)))]
    # last: every config this sweep would run has no data, so each valid one stops at its preflight
    return [*argv, "--set", "data.name=fashion-mnist", "--set", f"data.root={paths['nodata']}"]


@pytest.mark.e2e
@FUZZ
@given(data=st.data())
def test_sweep_answers_every_argument_list_with_one_error_line(paths, data):
    answer(data.draw(sweep_argv(paths)))
    assert not Path(paths["new"]).parent.exists()  # refused before anything was made


# --------------------------------------------------------------------------- compare, report

RUNS = ["finished", "finished-seed1", "other", "copy", "sweep", "summary-list", "rounds-binary", "config-binary",
        "unfinished", "file", "empty", "missing", "long"]


@FUZZ
@given(data=st.data())
def test_compare_answers_every_argument_list_with_one_error_line(paths, data):
    argv = ["compare", *data.draw(st.lists(a_path([paths[n] for n in RUNS]), max_size=4))]
    if data.draw(st.booleans()):
        argv += ["--baseline", data.draw(st.one_of(st.sampled_from(["depthfl", "strategy.name=exclusive", "=",
                                                                    ","]), texts))]
    answer(argv + (["--json"] if data.draw(st.booleans()) else []))


@pytest.mark.e2e
@FUZZ
@given(data=st.data())
def test_report_answers_every_argument_list_with_one_error_line(paths, data):
    argv = ["report", data.draw(st.one_of(a_path([paths[n] for n in RUNS]), texts))]
    answer(argv + (["--json"] if data.draw(st.booleans()) else []))


# ----------------------------------------------------------------------------------- resume

RESUMABLE = ["checkpoint_every=2", "checkpoint_every=0", "simulation.pace=true", "logging.tensorboard=true",
             "simulation.ray_address=auto", "data.root=nowhere", f"data.root={'r' * 5000}", "rounds=5", "seed=1",
             "data.name=digits", "nope=1", "=", "x"]


@FUZZ
@given(data=st.data())
def test_resume_answers_every_argument_list_with_one_error_line(paths, data):
    run = data.draw(a_path([paths[n] for n in ("unfinished", "damaged", "fallback", "finished", "rounds-binary",
                                               "config-binary", "file", "empty", "missing", "long")]))
    argv = ["resume", run] if data.draw(st.integers(0, 3)) else ["run", "--resume", run]
    for item in data.draw(st.lists(st.one_of(st.sampled_from(RESUMABLE), texts), max_size=2)):
        argv += ["--set", item]
    if argv[0] == "run" and data.draw(st.booleans()):
        argv += data.draw(st.sampled_from([["quickstart"], ["--out", paths["new"]]]))
    answer(argv)
