"""Unseen clients (``data.unseen_fraction``): held out of training altogether, evaluated apart, and the gap."""

import csv
import json
import re

import pytest

from fl_ee.cli import main
from fl_ee.core.metrics import fairness, mean_or_none
from fl_ee.results.schema import Summary
from fl_ee.wire.protocol import CLIENT, ClientAddress
from inprocess import run_inprocess
from partitions import unseen_clients

# every test reads one of the module's runs: the whole module is slow
pytestmark = pytest.mark.e2e

TINY = ["rounds=2", "eval_every=1", "data.num_clients=10", "strategy.fraction_train=1.0",
        "training.local_epochs=1", "training.batch_size=64", "personalisation.epochs=1"]
HELD_OUT = sorted(unseen_clients(10, 3, 0))  # round(0.3 x 10) of the quickstart's seed 0


class Spy:
    """fl-ee's ClientApp, noting the client and the kind of every message it handles."""

    def __init__(self) -> None:
        from fl_ee.federation.client import app
        self.app, self.seen = app, []

    def __call__(self, message, context):
        address = ClientAddress.from_record(message.content.config_records[CLIENT])
        self.seen.append((message.metadata.message_type, address.client_id))
        return self.app(message=message, context=context)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The quickstart preset, 2 rounds over 10 clients, 3 of them unseen: (the spy, the run directory)."""
    out = tmp_path_factory.mktemp("unseen") / "run"
    spy = Spy()
    run_inprocess(out, [*TINY, "data.unseen_fraction=0.3"], client_app=spy)
    return spy, out


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A run without unseen clients (1 round over 4 clients): its run directory."""
    out = tmp_path_factory.mktemp("plain") / "run"
    run_inprocess(out, [*TINY, "rounds=1", "data.num_clients=4"], checkpoints=False)
    return out


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def _clients(out) -> list[dict[str, str]]:
    with open(out / "clients.csv") as handle:
        return list(csv.DictReader(handle))


def test_unseen_clients_never_train_and_are_evaluated_every_evaluation_round(run):
    spy, out = run
    assert len(HELD_OUT) == 3
    trained = {c for kind, c in spy.seen if kind == "train"}
    evaluated = [c for kind, c in spy.seen if kind == "evaluate"]
    assert trained == set(range(10)) - set(HELD_OUT)  # fraction_train = 1: every other client, never an unseen one
    assert sorted(c for c in evaluated if c in HELD_OUT) == sorted(HELD_OUT * 2)  # both evaluation rounds
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    for record in rounds:
        assert not {c["client_id"] for c in record["clock"]["clients"]} & set(HELD_OUT)  # no straggler figure
        assert record["evaluate"]["unseen_clients"] == HELD_OUT
        assert not set(record["evaluate"]["clients"]) & set(HELD_OUT)
    assert not any((out / "checkpoint" / "clients" / f"{c:05d}").exists() for c in HELD_OUT)  # nothing kept
    sampled = sum(t["sampled"] for t in _summary(out)["stragglers"]["outcomes_by_tier"].values())
    assert sampled == 2 * 7


def test_the_summary_reports_participating_and_unseen_clients_apart_with_the_gap(run):
    _, out = run
    summary, rows = _summary(out), _clients(out)
    assert [int(r["client_id"]) for r in rows if r["unseen"] == "1"] == HELD_OUT
    tiers = list(summary["clients"]["by_tier"])
    unseen = summary["unseen"]
    assert unseen["client_ids"] == HELD_OUT and unseen["clients"]["total"] == 3 and summary["clients"]["total"] == 10
    assert unseen["clients"]["by_tier"] == {t: sum(r["tier"] == t for r in rows if r["unseen"] == "1") for t in tiers}

    def deepest(flag: str) -> tuple[list[float], list[str]]:
        chosen = [r for r in rows if r["unseen"] == flag]
        return [float(r[f"accuracy_exit{r['depth']}"]) for r in chosen], [r["tier"] for r in chosen]

    for section, flag in ((summary["fairness"], "0"), (unseen["fairness"], "1")):
        by_hand = fairness(*deepest(flag), tiers)
        assert section["by_tier"] == pytest.approx(by_hand.pop("by_tier"), abs=1e-6)  # clients.csv rounds to 1e-6
        assert {k: v for k, v in section.items() if k != "by_tier"} == pytest.approx(by_hand, abs=1e-6)
    mine, theirs = summary["accuracy"]["personalised"], unseen["personalised"]
    assert mine["evaluated_clients"] == 7 and theirs["evaluated_clients"] == 3
    assert theirs["mean"] == pytest.approx(mean_or_none(deepest("1")[0]), abs=1e-6)
    assert unseen["gap"]["mean"] == pytest.approx(mine["mean"] - theirs["mean"])
    for exit_, gap in unseen["gap"]["by_exit"].items():
        held = [float(r[f"accuracy_exit{exit_}"]) for r in rows if r["unseen"] == "1" and r[f"accuracy_exit{exit_}"]]
        assert gap == (None if not held else pytest.approx(mine["by_exit"][exit_] - sum(held) / len(held), abs=1e-6))
    assert unseen["gap"]["adaptive_accuracy"] == pytest.approx(mine["adaptive_accuracy"] - theirs["adaptive_accuracy"])
    assert Summary.model_validate(summary).model_dump(by_alias=True, mode="json") == summary  # read back typed whole


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _gap(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} pp"


def test_report_and_compare_show_the_unseen_clients(run, plain, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    _, out = run
    summary = _summary(out)
    mine, unseen = summary["accuracy"]["personalised"], summary["unseen"]
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Unseen clients: personalised accuracy (%)" in text
    for label, keys in [("deepest exit", ("mean",)), ("exit 1", ("by_exit", "1")), ("ensemble", ("ensemble",))]:
        def at(tree, keys=keys):
            for key in keys:
                tree = tree[key]
            return tree
        cells = [_pct(at(mine)), _pct(at(unseen["personalised"])), _gap(at(unseen["gap"]))]
        assert re.search(rf"^ *{label} +{' +'.join(map(re.escape, cells))} *$", text, re.M), label
    assert re.search(rf"^ *bottom decile % +{_pct(summary['fairness']['bottom_decile'])} ", text, re.M)
    assert main(["compare", str(out), str(plain)]) == 0
    text = capsys.readouterr().out
    f = summary["fairness"]
    for label, cells in [("unseen clients' mean %", [_pct(unseen["personalised"]["mean"]), "-"]),
                         ("generalisation gap", [_gap(unseen["gap"]["mean"]), "-"]),
                         ("std %", [_pct(f["std"]), _pct(_summary(plain)["fairness"]["std"])])]:
        assert re.search(rf"^ *{re.escape(label)} +{' +'.join(map(re.escape, cells))} *$", text, re.M), label


def test_a_run_without_unseen_clients_has_no_unseen_section(plain):
    summary = _summary(plain)
    assert "unseen" not in summary and "unseen" not in _clients(plain)[0]
    assert "unseen" not in Summary.model_validate(summary).model_dump(by_alias=True, mode="json")
    rounds = [json.loads(line) for line in (plain / "rounds.jsonl").read_text().splitlines()]
    assert not {"unseen", "unseen_clients"} & set(rounds[0]["evaluate"])
