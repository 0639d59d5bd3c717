"""``fl-ee report --plots`` on damaged and degenerate run directories, and every table within 80 columns."""

import io
import re
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from fl_ee.cli import main
from fl_ee.core.config import load_config
from fl_ee.federation.plan import make_plan, plan_renderables
from fl_ee.federation.preflight import preflight
from fl_ee.results.plots import PLOTS, Skip, accuracy_over_rounds, client_accuracies
from fl_ee.results.report import compare_table, policy_table, report_renderables, tier_table
from fl_ee.results.rundir import load_run
from inprocess import run_inprocess

TINY = ["rounds=2", "data.num_clients=4", "eval_every=2",
        "training.local_epochs=1", "training.batch_size=64", "personalisation.epochs=1"]
OFFLINE = [f"tiers.{i}.availability=0" for i in range(3)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A normal tiny run, one without client evaluation, and one in which no client ever trained."""
    parent = tmp_path_factory.mktemp("robust")
    made = {"ok": TINY, "noeval": [*TINY, "strategy.fraction_evaluate=0"], "idle": [*TINY, *OFFLINE]}
    for name, overrides in made.items():
        run_inprocess(parent / name, overrides)
    return {name: parent / name for name in made}


def _report(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _copy(path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(path, tmp_path / path.name, ignore=shutil.ignore_patterns("plots", "report.html")))


@pytest.mark.e2e
def test_a_run_without_client_evaluation_reports_dashes_and_skips_its_plots(runs, tmp_path, capsys):
    path = _copy(runs["noeval"], tmp_path)
    code, out, err = _report(capsys, str(path), "--plots", "--html")
    assert code == 0 and "Traceback" not in err
    assert "no client was evaluated (strategy.fraction_evaluate = 0)" in " ".join(out.split())
    for name in ("client_accuracy_cdf", "exit_distribution", "accuracy_vs_flops", "reliability"):
        assert f"skipped plot {name}: no client was evaluated (strategy.fraction_evaluate = 0)" in err
    assert {p.stem for p in (path / "plots").glob("*.png")} == {"round_time", "participation", "accuracy_rounds",
                                                                 "accuracy_time"}
    drawn = accuracy_over_rounds(load_run(path)).axes[0].get_legend_handles_labels()[1]
    assert drawn == ["global model (deepest exit)"]


@pytest.mark.e2e
def test_a_single_evaluation_is_drawn_on_its_round_with_a_note(runs):
    ax = accuracy_over_rounds(load_run(runs["ok"])).axes[0]  # 2 rounds, eval_every 2: round 2 alone
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2"]
    assert ax.get_xlim() == (1, 3)
    assert [list(line.get_xdata()) for line in ax.lines] == [[2]] * 5  # a dot per tier, the mean, the global model
    deepest = load_run(runs["ok"]).evaluations[-1]["evaluate"]["global"]["by_exit"]
    assert ax.lines[-1].get_label() == "global model (deepest exit)"
    assert list(ax.lines[-1].get_ydata()) == [100 * deepest["4"]]
    assert ax.get_xlabel() == ("round\n(one evaluation only, after round 2: more rounds or a smaller eval_every "
                               "draw a curve)")


@pytest.mark.e2e
def test_a_run_in_which_no_client_trained_reports_its_warning(runs, tmp_path, capsys):
    path = _copy(runs["idle"], tmp_path)
    code, out, err = _report(capsys, str(path), "--plots")
    assert code == 0 and "Traceback" not in err and "skipped" not in err
    assert "warning: no client trained in any of the 2 rounds" in " ".join(out.split())
    assert {p.stem for p in (path / "plots").glob("*.png")} == set(PLOTS)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("damage", "note"),
    [
        (lambda text: text.replace("accuracy_exit", "acc_exit"), "no accuracy_exit"),
        (lambda text: text.replace("depth", "deep", 1), "no depth column"),
        (lambda text: re.sub(r",0\.\d+", ",abc", text), "is not a number"),
        (lambda text: "\n".join(text.splitlines()[:2]) + "\n" + text.splitlines()[2][:12], "line 3 does not have"),
        (lambda text: text.splitlines()[0] + "\n" + "1,x\n", "does not have one cell per column"),
    ],
    ids=["columns-renamed", "depth-missing", "not-a-number", "truncated", "short-row"],
)
def test_a_damaged_clients_csv_is_named_with_what_is_wrong(runs, tmp_path, damage, note):
    path = _copy(runs["ok"], tmp_path)
    csv = path / "clients.csv"
    csv.write_text(damage(csv.read_text()))
    with pytest.raises(Skip) as why:
        client_accuracies(load_run(path))
    assert str(why.value).startswith(f"{csv}: ") and note in str(why.value)


@pytest.mark.e2e
def test_a_damaged_clients_csv_skips_its_plot_with_a_note(runs, tmp_path, capsys):
    path = _copy(runs["ok"], tmp_path)
    csv = path / "clients.csv"
    csv.write_text(csv.read_text()[:-20])  # truncated
    code, _, err = _report(capsys, str(path), "--plots")
    assert code == 0 and "Traceback" not in err
    skipped = [line for line in err.splitlines() if line.startswith("skipped plot client_accuracy_cdf:")]
    assert len(skipped) == 1 and str(csv) in skipped[0] and "does not have one cell per column" in skipped[0], err


@pytest.mark.e2e
def test_a_clients_csv_that_is_not_text_is_one_error_line(runs, tmp_path, capsys):
    path = _copy(runs["ok"], tmp_path)
    (path / "clients.csv").write_bytes(b"\xff\xfe\x00garbage\x00")
    code, out, err = _report(capsys, str(path), "--plots")
    assert code == 2 and out == ""
    assert err.startswith(f"fl-ee: error: {path / 'clients.csv'}: ") and err.count("\n") == 1


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "content", "why"), [
    ("summary.json", b"[]", "summary.json is not a run's summary (a JSON object)"),
    ("summary.json", b"\xff\xd8\xff\xe0 binary", "summary.json is not JSON"),
    ("rounds.jsonl", b"\x89PNG\r\n\x1a\n\x00\xff", "rounds.jsonl: not a rounds log (not UTF-8 text)"),
    ("rounds.jsonl", b'[1, 2]\n{"round": 2}\n',
     "rounds.jsonl: line 1 is not a round's record (a JSON object with its round)"),
    ("config.toml", b"\xff\xfe\x00 binary", "config.toml: not UTF-8 text"),
], ids=["summary-list", "summary-binary", "rounds-binary", "rounds-list", "config-binary"])
def test_a_file_of_a_run_that_does_not_read_is_one_error_line(runs, tmp_path, capsys, name, content, why):
    path = _copy(runs["ok"], tmp_path)
    (path / name).write_bytes(content)
    for command in (["report", str(path)], ["report", str(path), "--json"], ["compare", str(path), str(path)]):
        assert main(command) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == f"fl-ee: error: {path}/{why}\n", command


@pytest.mark.e2e
def test_an_error_log_that_is_not_text_still_reports(runs, tmp_path, capsys):
    path = _copy(runs["ok"], tmp_path)
    (path / "error.log").write_bytes(b"boom \xff\xfe\nrest")
    assert main(["report", str(path)]) == 0
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------------------ width


def _render(renderable, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text().splitlines()


def _assert_fits(lines: list[str], width: int = 80) -> None:
    assert lines and max(len(line) for line in lines) <= width, "\n".join(lines)
    assert not any("…" in line for line in lines), "\n".join(lines)


@pytest.mark.e2e
@pytest.mark.parametrize("width", [80, 100, 140])
def test_every_report_table_fits_the_terminal_uncut(runs, width):
    for name in ("ok", "noeval", "idle"):
        run = load_run(runs[name])
        for part in report_renderables(run):  # tier, progress, fairness/efficiency/stragglers, warnings
            _assert_fits(_render(part, width), width)
    three = [load_run(runs[n]) for n in ("ok", "noeval", "idle")]
    _assert_fits(_render(compare_table(three), width), width)


@pytest.mark.e2e
def test_split_tables_keep_every_cell(runs):
    run = load_run(runs["ok"])
    narrow, wide = " ".join(_render(tier_table(run), 80)), " ".join(_render(tier_table(run), 200))
    assert len(_render(tier_table(run), 200)) < len(_render(tier_table(run), 80))  # split at 80, whole at 200
    words = [{w for w in text.split() if "─" not in w} for text in (wide, narrow)]
    assert words[0] == words[1]  # every header, label and figure, none cut


POLICIES = ("entropy", "max-prob", "calibrated", "patience")


def _policy_rows(lines: list[str]) -> list[list[str]]:
    return [line.split() for line in lines if line.split()[:1] and line.split()[0] in POLICIES]


@pytest.mark.e2e
def test_the_policy_table_stays_whole_at_80_columns_and_wide_shows_every_column(runs, capsys, monkeypatch):
    run = load_run(runs["ok"])
    lines = _render(policy_table(run), 80)
    _assert_fits(lines)
    headers = [line.split() for line in lines if line.split()[:1] == ["policy"]]
    assert headers == [["policy", "thresholds", "scope", "accuracy", "%", "drop", "MFLOPs", "saving", "%"]]
    rows = _policy_rows(lines)  # e.g. entropy fixed - 64.5 -5.0 pp 0.195 50.3: every figure of a row on its line
    assert len(rows) == 28 and {len(row) for row in rows} == {8}
    assert "latency ms left out at this width: `fl-ee report --wide` (or --html) shows it" in " ".join(
        " ".join(lines).split())
    whole = _render(policy_table(run), 120)  # a wider terminal shows it all
    assert {len(row) for row in _policy_rows(whole)} == {9} and "left out" not in " ".join(whole)

    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = _report(capsys, str(runs["ok"]), "--wide")
    assert code == 0
    wide = out.splitlines()
    assert [line.split()[-2:] for line in wide if line.split()[:1] == ["policy"]] == [["latency", "ms"]]
    assert len(_policy_rows(wide)) == 28 and {len(row) for row in _policy_rows(wide)} == {9}
    assert max(map(len, wide)) > 80 and "left out" not in out


def test_the_check_plan_fits_80_columns():
    cfg = preflight(load_config("stragglers", {"data.num_clients": 6, "rounds": 2}))
    for part in plan_renderables(make_plan(cfg)):
        _assert_fits(_render(part))
