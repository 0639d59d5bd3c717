"""``fl-ee report`` / ``fl-ee compare`` on real tiny runs (one with late stragglers) and on an
interrupted one."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from fl_ee.cli import main
from fl_ee.core.metrics import efficiency, fairness, mean_or_none
from fl_ee.results.plots import PLOTS
from fl_ee.results.report import best_of
from inprocess import run_inprocess

TINY = ["rounds=2", "eval_every=1", "data.num_clients=6", "strategy.fraction_train=1.0",
        "training.local_epochs=1", "training.batch_size=64", "personalisation.epochs=1"]
DEADLINE = ["rounds=2", "eval_every=1", "simulation.straggler_policy=deadline"]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """These tests read figures off whole table lines: print as on a terminal wide enough for them."""
    monkeypatch.setenv("COLUMNS", "160")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Real tiny runs through the in-process grid (the same files ``fl-ee run`` writes): two that
    differ only in the strategy's weighting, and one of the `stragglers` preset under a deadline
    (its slow tier comes late)."""
    parent = tmp_path_factory.mktemp("report")
    arguments = {
        "weighted": (None, [*TINY, "strategy.options.weighted=true"]),
        "unweighted": (None, [*TINY, "strategy.options.weighted=false"]),
        "deadline": ("stragglers", DEADLINE),
    }
    for name, (preset, overrides) in arguments.items():
        run_inprocess(parent / name, overrides, preset)
    return {name: parent / name for name in arguments}


@pytest.fixture
def run_dir(runs) -> Path:
    return runs["weighted"]


@pytest.fixture
def copy_of(run_dir, tmp_path):
    """A scratch copy of the real run, to damage or extend."""
    def make(name: str) -> Path:
        return Path(shutil.copytree(run_dir, tmp_path / name, ignore=shutil.ignore_patterns("plots", "report.html")))
    return make


def _clients(path: Path) -> list[dict[str, str]]:
    with open(path / "clients.csv") as handle:
        return list(csv.DictReader(handle))


def _report(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- summary.json sections


@pytest.mark.e2e
def test_summary_fairness_and_efficiency_follow_from_clients_csv(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [r for r in _clients(run_dir) if r["evaluated_round"]]
    tiers = list(summary["clients"]["by_tier"])
    deepest = [float(r[f"accuracy_exit{r['depth']}"]) for r in rows]
    f = summary["fairness"]
    assert list(f) == ["mean", "std", "min", "worst10", "best10", "bottom_decile", "top_decile", "jain", "gini",
                       "by_tier", "tier_gap"]
    by_hand = fairness(deepest, [r["tier"] for r in rows], tiers)
    assert f["by_tier"] == pytest.approx(by_hand.pop("by_tier"), abs=1e-6)  # clients.csv rounds to 1e-6
    assert {k: v for k, v in f.items() if k != "by_tier"} == pytest.approx(by_hand, abs=1e-6)
    assert f["mean"] == pytest.approx(summary["accuracy"]["personalised"]["mean"])
    assert f["by_tier"] == pytest.approx(summary["accuracy"]["personalised"]["by_tier"])

    e = summary["efficiency"]
    assert list(e) == ["exit_distribution", "expected_flops", "flops_saving", "by_tier"]

    def efficiency_of(rows):
        fractions = [[float(r[f"exit_fraction{i}"]) for i in range(1, int(r["depth"]) + 1)] for r in rows]
        return efficiency(fractions, [float(r["expected_flops"]) for r in rows],
                          [float(r["full_flops"]) for r in rows], [int(r["num_test"]) for r in rows], 4)

    for part, members in [(e, rows), *((e["by_tier"][t], [r for r in rows if r["tier"] == t]) for t in tiers)]:
        by_hand = efficiency_of(members)
        assert part["exit_distribution"] == pytest.approx(by_hand["exit_distribution"], abs=1e-5)
        assert part["expected_flops"] == pytest.approx(by_hand["expected_flops"], rel=1e-5)
        assert part["flops_saving"] == pytest.approx(by_hand["flops_saving"], abs=1e-6)
    assert sum(e["exit_distribution"].values()) == pytest.approx(1.0)
    assert 0 <= e["flops_saving"] < 1


@pytest.mark.e2e
def test_clients_report_their_full_cost_and_exit_shares(run_dir):
    for row in _clients(run_dir):
        depth = int(row["depth"])
        shares = [row[f"exit_fraction{i}"] for i in range(1, 5)]
        assert all(s == "" for s in shares[depth:])
        assert sum(float(s) for s in shares[:depth]) == pytest.approx(1.0, abs=1e-5)
        assert float(row["expected_flops"]) <= float(row["full_flops"])
    full = {int(r["depth"]): float(r["full_flops"]) for r in _clients(run_dir)}
    assert sorted(full) == [2, 3, 4] and full[2] < full[3] < full[4]  # the deeper, the dearer


@pytest.mark.e2e
def test_the_deployed_policy_is_the_clients_own_figures_and_a_row_of_the_policy_table(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    anytime, rows = summary["deployment"]["anytime"], summary["policies"]["rows"]
    clients = _clients(run_dir)
    assert anytime["accuracy"] == pytest.approx(mean_or_none([float(r["adaptive_accuracy"]) for r in clients]))
    assert anytime["accuracy"] == pytest.approx(summary["accuracy"]["personalised"]["adaptive_accuracy"])
    assert anytime["expected_flops"] == pytest.approx(summary["efficiency"]["expected_flops"])
    row = next(r for r in rows if (r["policy"], r["thresholds"]) == (anytime["policy"], anytime["thresholds"])
               and r["scope"] in (anytime["scope"], "-"))
    assert row["accuracy"] == anytime["accuracy"] and row["drop"] == pytest.approx(
        summary["accuracy"]["personalised"]["mean"] - row["accuracy"])
    for tier, budgeted in summary["deployment"]["budgeted"]["by_tier"].items():
        curve = budgeted["curves"]["entropy"]
        # normalised entropy is at most 1: at threshold 1 every sample leaves at exit 1
        assert curve["thresholds"][-1] == 1.0 and curve["expected_flops"][-1] == pytest.approx(
            summary["deployment"]["subnet"]["by_tier"][tier]["1"]["flops"])
        name, j = budgeted["pareto"][0]  # the cheapest point of the front
        assert budgeted["curves"][name]["expected_flops"][j] == min(
            f for c in budgeted["curves"].values() for f in c["expected_flops"])


# ---------------------------------------------------------------------------- report


@pytest.mark.e2e
def test_report_prints_the_tables(run_dir, capsys):
    code, out, _ = _report(capsys, str(run_dir))
    assert code == 0
    for text in ("per tier after 2 rounds", "over rounds", "Fairness", "Jain's index", "Efficiency", "Exit policies",
                 "deepest exit", "calibrated", "patience", "personal",
                 "Stragglers", "particip. %", "virtual s", "iot", "phone", "laptop", "global"):
        assert text in out


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _cells(out: str, label: str) -> list[str]:
    """The cells after ``label`` on the one printed line that starts with it (for the full-width tables)."""
    lines = [line.split() for line in out.splitlines() if line.split()[:1] == [label]]
    assert len(lines) == 1, (label, lines)
    return lines[0][1:]


def _value(out: str, label: str) -> str:
    """The value printed beside ``label`` in a metric/value table (several stand side by side)."""
    found = re.findall(rf"(?:^|\s){re.escape(label)} +(\S+(?: pp)?)(?=\s|$)", out, re.M)
    assert len(found) == 1, (label, found)
    return found[0]


def _near(printed: str, value: float, scale: float = 100.0, unit: float = 0.1) -> bool:
    """``printed`` is ``scale * value`` rounded to ``unit`` (allowing for the last bit of a mean)."""
    return abs(float(printed) - scale * value) <= unit / 2 + 1e-9


@pytest.mark.e2e
def test_report_figures_are_the_run_files_numbers(run_dir, capsys):
    """Every figure ``fl-ee report`` prints, recomputed from summary.json, clients.csv and rounds.jsonl."""
    code, out, _ = _report(capsys, str(run_dir))
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = _clients(run_dir)
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    participation = summary["stragglers"]["participation_by_tier"]

    # tier table: means over each tier's clients.csv rows; the "all" row's FLOPs are the summary's
    for tier, depth in (("iot", 2), ("phone", 3), ("laptop", 4)):
        members = [r for r in rows if r["tier"] == tier]
        cells, submodel = _cells(out, tier), summary["submodels"][tier]
        assert cells[:6] == [str(depth), "1", f"{submodel['flops'] / 1e6:.3f}", f"{submodel['params'] / 1e3:,.1f}",
                             str(len(members)), _pct(participation[tier])]
        assert submodel["flops"] == max(float(r["full_flops"]) for r in members)  # the full submodel's cost
        for i in range(1, 5):
            held = [float(r[f"accuracy_exit{i}"]) for r in members if r[f"accuracy_exit{i}"]]
            assert (cells[5 + i] == "-") if not held else _near(cells[5 + i], sum(held) / len(held)), (tier, i)
        assert _near(cells[10], sum(float(r["accuracy_ensemble"]) for r in members) / len(members))
        assert _near(cells[11], sum(float(r["adaptive_accuracy"]) for r in members) / len(members))
        weights = [int(r["num_test"]) for r in members]
        expected = sum(w * float(r["expected_flops"]) for w, r in zip(weights, members)) / sum(weights)
        full = sum(w * float(r["full_flops"]) for w, r in zip(weights, members)) / sum(weights)
        assert _near(cells[12], expected, 1e-6, 0.001) and _near(cells[13], 1 - expected / full)
    everyone = _cells(out, "all")
    assert everyone[0] == "6"
    for i in range(1, 5):
        held = [float(r[f"accuracy_exit{i}"]) for r in rows if r[f"accuracy_exit{i}"]]
        assert _near(everyone[i], sum(held) / len(held))
    assert _near(everyone[5], sum(float(r["accuracy_ensemble"]) for r in rows) / len(rows))
    assert everyone[7:] == [f"{summary['efficiency']['expected_flops'] / 1e6:.3f}",
                            _pct(summary["efficiency"]["flops_saving"])]
    global_eval = summary["accuracy"]["global"]
    assert _cells(out, "global") == [*(_pct(v) for v in global_eval["by_exit"].values()), _pct(global_eval["ensemble"])]
    mean = summary["accuracy"]["personalised"]["mean"]
    assert f"personalised mean at each client's deepest exit: {_pct(mean)}%" in out

    # progress table: one row per evaluation, from rounds.jsonl
    for record in rounds:
        personalised = record["evaluate"]["personalised"]
        assert _cells(out, str(record["round"])) == [
            f"{record['clock']['virtual_time_s']:,.1f}", _pct(personalised["mean"]),
            *(_pct(personalised["by_tier"][t]) for t in ("iot", "phone", "laptop")),
            _pct(record["evaluate"]["global"]["by_exit"]["4"])]

    # fairness, efficiency and stragglers: the summary's sections, as formatted
    f, e, s = summary["fairness"], summary["efficiency"], summary["stragglers"]
    expected_values = {
        "mean %": _pct(f["mean"]), "std %": _pct(f["std"]), "min %": _pct(f["min"]),
        "worst 10% %": _pct(f["worst10"]), "best 10% %": _pct(f["best10"]),
        "bottom decile %": _pct(f["bottom_decile"]), "top decile %": _pct(f["top_decile"]),
        "Jain's index": f"{f['jain']:.3f}", "Gini": f"{f['gini']:.3f}", "tier gap": f"{100 * f['tier_gap']:.1f} pp",
        **{f"exit {i} share %": _pct(v) for i, v in e["exit_distribution"].items()},
        "expected MFLOPs": f"{e['expected_flops'] / 1e6:.3f}", "saving vs full %": _pct(e["flops_saving"]),
        "virtual time s": f"{summary['virtual_time_s']:,.1f}", "time to accuracy s": "-",
        "round time p50 s": f"{s['round_time_s']['p50']:,.1f}", "round time p90 s": f"{s['round_time_s']['p90']:,.1f}",
        "round time max s": f"{s['round_time_s']['max']:,.1f}", "late %": _pct(s["late_fraction"]),
        "dropped updates": str(s["dropped_updates"]),
    }
    assert f["mean"] == mean and summary["time_to_accuracy_s"] is None
    for label, value in expected_values.items():
        assert _value(out, label) == value, label


@pytest.mark.e2e
def test_report_json_prints_the_summary(run_dir, capsys):
    code, out, _ = _report(capsys, str(run_dir), "--json")
    assert code == 0 and json.loads(out) == json.loads((run_dir / "summary.json").read_text())


@pytest.mark.e2e
def test_report_plots_and_self_contained_html(copy_of, capsys):
    path = copy_of("plots")
    code, _, err = _report(capsys, str(path), "--plots", "--html")
    assert code == 0
    written = {p.stem for p in (path / "plots").glob("*.png")}
    assert written == set(PLOTS) and "skipped" not in err
    assert all((path / "plots" / f"{n}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in written)
    page = (path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(written)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "Fairness" in page and "Jain" in page
    assert "latency ms" in page and "left out" not in page  # the whole policy table, whatever the terminal


@pytest.mark.e2e
def test_an_interrupted_run_reports_what_its_rounds_log_holds(copy_of, capsys):
    path = copy_of("interrupted")
    lines = (path / "rounds.jsonl").read_text().splitlines()
    (path / "rounds.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed mid-write
    (path / "summary.json").unlink()
    (path / "clients.csv").unlink()
    code, out, err = _report(capsys, str(path), "--plots", "--html")
    assert code == 0
    assert "unfinished run: 1 of 2 rounds logged" in out and "per tier after" not in out
    first = json.loads(lines[0])["evaluate"]["personalised"]
    assert f"{100 * first['mean']:.1f}" in out
    assert {p.stem for p in (path / "plots").glob("*.png")} == {"accuracy_rounds", "accuracy_time", "round_time",
                                                                 "participation"}  # what rounds.jsonl alone gives
    assert "skipped plot client_accuracy_cdf: no clients.csv" in err
    assert (path / "report.html").is_file()

    code, _, err = _report(capsys, str(path), "--json")
    assert code == 2 and "did not finish" in err and len(err.strip().splitlines()) == 1


@pytest.mark.e2e
def test_a_run_written_under_older_config_rules_still_reports(copy_of, capsys):
    path = copy_of("old")
    text = (path / "config.toml").read_text().replace("kd_weight = 0.5", "kd_weight = -1.0")
    (path / "config.toml").write_text(text.replace("[training]", "[training]\nretired_option = 1"))
    code, out, _ = _report(capsys, str(path))
    assert code == 0 and "per tier after" in out


@pytest.mark.parametrize("make", ["missing", "foreign", "file"])
def test_a_missing_or_foreign_directory_fails_with_one_line(tmp_path, make, capsys):
    target = tmp_path / "x"
    if make == "foreign":
        target.mkdir()
        (target / "notes.txt").write_text("hello")
    elif make == "file":
        target.write_text("hello")
    for command in (["report", str(target)], ["compare", str(target), str(target)]):
        code = main(command)  # in process: the CLI's own error path, without a Python start per case
        out, err = capsys.readouterr()
        assert code == 2 and out == ""
        assert err.startswith("fl-ee: error:") and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------- stragglers


@pytest.mark.e2e
def test_report_shows_late_stragglers_of_a_deadline_run(runs, capsys):
    path = runs["deadline"]
    summary = json.loads((path / "summary.json").read_text())
    stragglers = summary["stragglers"]
    assert stragglers["late_fraction"] > 0  # the slow tier misses the deadline
    code, out, err = _report(capsys, str(path), "--plots")
    assert code == 0 and "skipped" not in err
    for pattern in (rf"virtual time s +{summary['virtual_time_s']:.1f}",
                    rf"late % +{100 * stragglers['late_fraction']:.1f}",
                    rf"dropped updates +{stragglers['dropped_updates']}"):
        assert re.search(pattern, out), pattern
    slow = next(line for line in out.splitlines() if line.strip().startswith("slow"))
    assert slow.split()[6] == f"{100 * stragglers['participation_by_tier']['slow']:.1f}"
    assert {p.stem for p in (path / "plots").glob("*.png")} == set(PLOTS)


@pytest.mark.e2e
def test_an_interrupted_run_shows_its_virtual_time(runs, tmp_path, capsys):
    path = Path(shutil.copytree(runs["deadline"], tmp_path / "cut", ignore=shutil.ignore_patterns("plots")))
    first = json.loads((path / "rounds.jsonl").read_text().splitlines()[0])
    (path / "summary.json").unlink()
    (path / "clients.csv").unlink()
    (path / "rounds.jsonl").write_text(json.dumps(first) + "\n")
    code, out, _ = _report(capsys, str(path))
    assert code == 0 and re.search(rf"virtual time s +{first['clock']['virtual_time_s']:.1f}", out)


# ---------------------------------------------------------------------------- compare


def test_best_of_highlights_every_tie_and_ignores_missing():
    assert best_of([0.5, None, 0.7, 0.7], higher_is_better=True) == {2, 3}
    assert best_of([3.0, 1.0, None], higher_is_better=False) == {1}
    assert best_of([None, None], higher_is_better=True) == set()


@pytest.mark.e2e
def test_compare_shows_two_strategies_side_by_side(runs, capsys):
    run_dir, other = runs["weighted"], runs["unweighted"]
    assert main(["compare", str(run_dir), str(other)]) == 0
    out = capsys.readouterr().out
    assert f"Runs compared (in {run_dir.parent})" in out
    assert re.search(r"metric +weighted +unweighted", out)
    assert "depthfl weighted=true" in out and "depthfl weighted=false" in out
    summaries = [json.loads((p / "summary.json").read_text()) for p in (run_dir, other)]
    assert summaries[0]["fairness"]["jain"] != summaries[1]["fairness"]["jain"]  # the weights change who is served
    by_label = {
        "personalised mean %": lambda s: _pct(s["fairness"]["mean"]),
        "worst 10% %": lambda s: _pct(s["fairness"]["worst10"]),
        "std %": lambda s: _pct(s["fairness"]["std"]),
        "bottom decile %": lambda s: _pct(s["fairness"]["bottom_decile"]),
        "top decile %": lambda s: _pct(s["fairness"]["top_decile"]),
        "unseen clients' mean %": lambda s: "-",
        "Jain's index": lambda s: f"{s['fairness']['jain']:.3f}",
        "Gini": lambda s: f"{s['fairness']['gini']:.3f}",
        "tier gap": lambda s: f"{100 * s['fairness']['tier_gap']:.1f} pp",
        "virtual time s": lambda s: f"{s['virtual_time_s']:,.1f}",
        "time to accuracy s": lambda s: "-",
        "expected MFLOPs": lambda s: f"{s['efficiency']['expected_flops'] / 1e6:.3f}",
        "deployed policy accuracy %": lambda s: _pct(s["deployment"]["anytime"]["accuracy"]),
        "latency ms per sample": lambda s: f"{s['deployment']['anytime']['latency_ms']:.4f}",
        "energy mJ per sample": lambda s: f"{s['deployment']['anytime']['energy_mj']:.4f}",
    }
    for label, show in by_label.items():
        cells = [show(s) for s in summaries]
        assert re.search(rf"^ *{re.escape(label)} +{re.escape(cells[0])} +{re.escape(cells[1])} *$", out, re.M), label
    assert re.search(r"^ *seed +0 +0 *$", out, re.M) and re.search(r"^ *rounds +2/2 +2/2 *$", out, re.M)


@pytest.mark.e2e
def test_compare_needs_two_runs(run_dir, capsys):
    assert main(["compare", str(run_dir)]) == 2
    assert "at least two" in capsys.readouterr().err
