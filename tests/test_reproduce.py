"""``fl-ee reproduce``: recipes (format, bad input), verdicts on hand-made numbers, the report, end to end."""

import json
import math
import textwrap

import pytest

from fl_ee.cli import main
from fl_ee.core.config import load_config, parse_overrides
from fl_ee.results.rundir import load_run
from fl_ee.results.stats import PAIRED, WELCH
from fl_ee.studies.recipes import exit_of, load_recipe, shipped
from fl_ee.studies.reproduce import (
    REPRODUCE_JSON,
    REPRODUCE_MD,
    claim_rows,
    combined,
    figure_rows,
    judge,
    markdown,
    reproduction,
    shown_metrics,
)
from inprocess import resume_inprocess, run_inprocess

TINY = textwrap.dedent("""\
    title = "Tiny: a trained network beats an untrained one"
    paper = "Nobody. A Table. 2026."
    source = "made up for a test"
    setting = "digits"

    [scales.mini]
    config = "quickstart"
    gives_up = "everything"
    set = ["rounds=2", "eval_every=2", "data.num_clients=6", "strategy.fraction_train=1.0",
           "strategy.fraction_evaluate=0.0", "personalisation.mode=none", "training.distillation=none"]

    [scales.full]
    config = "quickstart"
    set = []

    [settings.trained]
    label = "SGD at lr 0.05"
    set = ["training.lr=0.05"]
    source = "Table 1"
    published = { global_exit4 = 90.0, global_ensemble = 91.5 }

    [settings.untrained]
    label = "SGD at lr 1e-5"
    set = ["training.lr=0.00001"]
    published = { global_exit4 = 10.0 }

    [[claims]]
    says = "training helps"
    better = "trained"
    than = "untrained"
    metrics = ["global_exit4"]

    [[claims]]
    says = "training hurts (a claim that must come out reversed)"
    better = "untrained"
    than = "trained"
    metrics = ["global_exit4", "global_ensemble"]
    """)


def _recipe(tmp_path, text=TINY, name="tiny"):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------ verdicts


def test_a_consistent_gap_holds_and_its_reverse_is_reversed():
    better, than = {0: 0.70, 1: 0.72, 2: 0.74}, {0: 0.60, 1: 0.63, 2: 0.66}
    found, result = judge(better, than)
    # differences 0.10, 0.09, 0.08: mean 0.09, sd 0.01, t = 0.09 / (0.01 / sqrt 3) = 15.588 on 2 df,
    # and for 2 df the two-sided p is 1 - t / sqrt(t^2 + 2)
    t = 0.09 / (0.01 / math.sqrt(3))
    assert found == "holds" and result.test == PAIRED
    assert result.difference == pytest.approx(0.09) and result.t == pytest.approx(t) and result.df == 2
    assert result.p == pytest.approx(1 - t / math.sqrt(t * t + 2)) and result.p == pytest.approx(0.00409, abs=1e-5)
    found, result = judge(than, better)
    assert found == "reversed" and result.difference == pytest.approx(-0.09) and result.t == pytest.approx(-t)


def test_a_gap_within_the_seed_spread_is_not_significant():
    # differences 0.05, -0.06, 0.08: mean 0.0233, sd 0.0737, t = 0.548 on 2 df, p = 0.64
    found, result = judge({0: 0.70, 1: 0.60, 2: 0.74}, {0: 0.65, 1: 0.66, 2: 0.66})
    d = [0.05, -0.06, 0.08]
    sd = math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    t = (sum(d) / 3) / (sd / math.sqrt(3))
    assert found == "not significant" and result.t == pytest.approx(t) and result.p == pytest.approx(
        1 - t / math.sqrt(t * t + 2))


def test_too_few_seeds_leave_a_claim_untested_and_unpaired_seeds_use_welch():
    assert judge({0: 0.9}, {0: 0.1}) == ("untested", None)
    assert judge({0: 0.9, 1: None}, {0: 0.1, 1: 0.2})[0] == "untested"  # one seed with a value on the better side
    found, result = judge({0: 0.90, 1: 0.92, 2: 0.91}, {0: 0.50, 1: 0.52})
    assert found == "holds" and result.test == WELCH


@pytest.mark.parametrize("verdicts, expected", [
    (["holds", "holds"], "holds"),
    (["holds", "not significant"], "not significant"),
    (["holds", "reversed", "untested"], "reversed"),
    (["holds", "untested"], "untested"),
    (["not significant", "untested"], "untested"),
])
def test_a_claim_over_several_metrics_holds_only_where_each_does(verdicts, expected):
    assert combined(verdicts) == expected


# ------------------------------------------------------------------------------ the report


def test_the_report_sets_measured_figures_beside_the_published_ones(tmp_path):
    recipe, _ = load_recipe(str(_recipe(tmp_path)))
    assert shown_metrics(recipe, "trained") == ["global_exit4", "global_ensemble"]
    measured = {"trained": {"global_exit4": {0: 0.80, 1: 0.82, 2: 0.84}, "global_ensemble": {0: 0.9, 1: 0.9, 2: 0.9}},
                "untrained": {"global_exit4": {0: 0.10, 1: 0.11, 2: 0.15}, "global_ensemble": {0: 0.1, 1: 0.2, 2: 0.1}}}
    report = {**reproduction(recipe, "mini", measured), "seeds": [0, 1, 2],
              "runs": {"total": 6, "finished": 6, "failed": {}}}
    exit4 = report["settings"]["trained"]["metrics"]["global_exit4"]
    assert exit4["published"] == pytest.approx(0.90) and exit4["mean"] == pytest.approx(0.82) and exit4["n"] == 3
    assert report["settings"]["untrained"]["metrics"]["global_ensemble"]["published"] is None
    first, second = report["claims"]
    assert first["verdict"] == "holds" and first["metrics"]["global_exit4"]["published_gap"] == pytest.approx(0.80)
    assert second["metrics"]["global_exit4"]["verdict"] == "reversed"
    assert second["metrics"]["global_ensemble"]["published_gap"] is None  # untrained's ensemble is not published
    assert second["verdict"] == "reversed"
    # mean 82.0, half the CI t(0.975, 2) * 0.02 / sqrt 3 = 4.303 * 0.011547 = 4.97 points; 82.0 - 90.00 = -8.0
    assert figure_rows(report)[0] == ("trained", "global_exit4", "90.00", "82.0 ± 5.0", "-8.0", "3")
    t = 0.70 / (0.01 / math.sqrt(3))  # differences 0.70, 0.71, 0.69
    assert claim_rows(report)[0][1:] == ("global_exit4", "+80.0", "+70.0", f"{1 - t / math.sqrt(t * t + 2):.3g}",
                                         "holds", "holds")
    page = markdown(report)
    assert page.startswith("# Tiny: a trained network beats an untrained one\n")
    assert "| trained | global_exit4 | 90.00 | 82.0 ± 5.0 | -8.0 | 3 |" in page
    assert "- What it gives up: everything" in page and "6 of 6 runs finished" in page


# ------------------------------------------------------------------------------ bad input


MEASURED = '[measured.mini]\nwhen = "today"\nseeds = 3\nverdicts = ["holds"]\n\n'
BAD_RECIPES = [  # (text replaced in TINY, by what, the one line said)
    ('says = "training helps"', 'says = "training helps"\nweight = 2', "recipe tiny: claims.0.weight: unknown key"),
    ('better = "trained"', 'better = "trainde"',
     "recipe tiny: claims.0.better: no setting 'trainde'; choose one of trained, untrained"),
    ('metrics = ["global_exit4"]', 'metrics = ["accuracy"]',
     "recipe tiny: claims.0.metrics: unknown metric 'accuracy'"),
    ("[scales.full]", "[scales.huge]", "recipe tiny: scales.huge"),
    ('set = ["training.lr=0.05"]', 'set = ["training.lr"]',
     "recipe tiny: settings.trained.set: --set 'training.lr': expected key=value"),
    ('set = ["training.lr=0.05"]', 'set = ["seed=3"]',
     "recipe tiny: settings.trained.set: the seeds come from fl-ee reproduce --seeds"),
    ("global_exit4 = 90.0", "global_exit4 = 0.9e3",
     "recipe tiny: settings.trained.published: published.global_exit4: 900.0 is no percentage"),
    ("[scales.full]", MEASURED + "[scales.full]", "recipe tiny: measured.mini.verdicts: 1 verdicts for 2 claims"),
    ("title = ", 'name = "other"\ntitle = ', "recipe tiny: name: unknown key (a recipe is named by its file)"),
    ('metrics = ["global_exit4"]', 'metrics = ["global_exit9"]',
     "recipe tiny: global_exit9 is past the deepest exit the tiers of setting trained hold (4)"),
    ('set = ["training.lr=0.05"]', 'set = ["training.lr=-1"]', "training.lr: must be > 0 (in setting trained, seed 0)"),
]


@pytest.mark.parametrize("old, new, message", BAD_RECIPES)
def test_a_bad_recipe_fails_in_one_line_before_any_run(old, new, message, tmp_path, capsys):
    out, text = tmp_path / "out", TINY.replace(old, new, 1)
    assert text != TINY
    assert main(["reproduce", str(_recipe(tmp_path, text)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fl-ee: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["nope"], "unknown recipe 'nope'; choose one of depthfl, niid-bench-fmnist, personal-exits"),
    (["missing.toml"], "recipe file not found: missing.toml"),
    (["depthfl", "--set", "training.lr=0.1"],
     "--set training.lr: a recipe's runs are fixed; --set may change only keys that change no result"),
    (["depthfl", "--seeds", "0"], "--seeds: must be in 1..100"),
    (["depthfl", "--jobs", "0"], "--jobs: must be at least 1"),
])
def test_bad_arguments_fail_in_one_line(argv, message, tmp_path, capsys):
    assert main(["reproduce", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fl-ee: error: ") and message in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ shipped recipes


@pytest.mark.parametrize("name", shipped())
def test_every_shipped_recipe_runs_valid_configs_at_both_scales(name):
    recipe, folder = load_recipe(name)
    assert recipe.name == name and len(recipe.settings) >= 2 and recipe.scales["mini"].gives_up
    for scale in ("mini", "full"):
        for setting_name, setting in recipe.settings.items():
            cfg = load_config(recipe.config_of(scale, folder), parse_overrides([*recipe.scales[scale].set,
                                                                                *setting.set]))
            exits = [exit_of(m) for m in shown_metrics(recipe, setting_name)]
            assert max((e for e in exits if e), default=0) <= cfg.max_depth
    for scale, measured in recipe.measured.items():  # a recorded run names a verdict for each claim
        assert recipe.verdict_line(scale).endswith(f"of {len(recipe.claims)} claims ({measured.seeds} seeds, "
                                                   f"{measured.when})")


def test_the_depthfl_recipe_holds_table_4s_figures():
    recipe, _ = load_recipe("depthfl")
    assert recipe.settings["depthfl"].published["global_exit4"] == 72.34
    assert recipe.settings["depthfl-nokd"].published["global_exit4"] == 67.78
    assert recipe.settings["depthfl"].published["global_ensemble"] == 74.92
    assert recipe.settings["depthfl-nokd"].published["global_ensemble"] == 73.18


def test_list_recipes_names_each_with_its_last_verdict(capsys):
    assert main(["list", "recipes"]) == 0
    out = capsys.readouterr().out
    for name in shipped():
        recipe = load_recipe(name)[0]
        assert f"\n{name} " in f"\n{out}"
        assert f"mini: {recipe.verdict_line('mini')}; full: {recipe.verdict_line('full')}" in " ".join(out.split())


def test_a_recorded_measurement_is_summed_up(tmp_path):
    text = TINY + '\n[measured.mini]\nwhen = "2026-04-01"\nseeds = 3\nverdicts = ["holds", "reversed"]\n'
    recipe, _ = load_recipe(str(_recipe(tmp_path, text)))
    assert recipe.verdict_line("mini") == "1 holds, 1 reversed of 2 claims (3 seeds, 2026-04-01)"
    assert recipe.verdict_line("full") == "not yet measured"


# ------------------------------------------------------------------------------ end to end


@pytest.mark.e2e  # six tiny digits runs, in process (the subprocess launcher is tested by test_sweep's e2e test)
def test_reproduce_runs_a_tiny_recipe_judges_it_and_continues_where_it_stopped(tmp_path, monkeypatch, capsys):
    launched = []

    def in_process(job, resume):  # the real server loop and ClientApp, in this process
        from test_sweep import Ended

        launched.append((job.setting, job.seed))
        (resume_inprocess(job.path) if resume else run_inprocess(job.path, job.overrides))
        return Ended(0)

    monkeypatch.setattr("fl_ee.studies.sweep.launch_subprocess", in_process)
    # after two rounds on digits the exits' ensemble is far above chance where exit 4 is not yet
    recipe = _recipe(tmp_path, TINY.replace('metrics = ["global_exit4"]', 'metrics = ["global_ensemble"]'))
    out = tmp_path / "root"
    assert main(["reproduce", str(recipe), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / REPRODUCE_JSON).read_text())
    assert len(launched) == 6 and printed["runs"] == {"total": 6, "finished": 6, "failed": {}}
    for setting in ("trained", "untrained"):
        stats = printed["settings"][setting]["metrics"]["global_exit4"]
        runs = [load_run(out / setting / f"seed-{s}") for s in range(3)]
        assert stats["values"] == {str(r.config.seed): r.global_by_exit["4"] for r in runs}
        assert all(r.config.training.lr == (0.05 if setting == "trained" else 0.00001) for r in runs)
    assert [c["verdict"] for c in printed["claims"]] == ["holds", "reversed"]
    assert printed["claims"][1]["metrics"]["global_ensemble"]["verdict"] == "reversed"
    assert (out / REPRODUCE_MD).read_text() == markdown(printed)
    assert json.loads((out / "sweep.json").read_text())["sweep"]["recipe"] == "tiny"
    assert main(["reproduce", str(recipe), "--out", str(out)]) == 0  # again: nothing left to run, the same verdicts
    out_text = capsys.readouterr()
    assert len(launched) == 6 and "6 finished before, 0 to run" in out_text.err
    assert "holds" in out_text.out and "reversed" in out_text.out
