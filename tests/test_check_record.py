"""The caches behind a fast ``fl-ee check``: FLOPs per network on disk, and the record of a check."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fl_ee.cli import main
from fl_ee.core.cache import CacheDamaged, cache_root, entry_path, read_entry, write_entry
from fl_ee.core.config import load_config, resolve_paths
from fl_ee.federation.checkrecord import RECORD, check_key
from fl_ee.models import ModelSpec, flops, submodel_flops

REPO = Path(__file__).resolve().parents[1]
SPEC = ModelSpec(in_channels=1, image_height=8, image_width=8, num_classes=10, width=4)


def _counted_afresh(monkeypatch) -> list[int]:
    """Forget this process's measurements; return a list that grows by one each time the counter runs."""
    monkeypatch.setattr(flops, "_MEASURED", {})
    counted, measure = [], flops._measure
    monkeypatch.setattr(flops, "_measure", lambda model: counted.append(1) or measure(model))
    return counted


def test_flops_are_counted_once_then_read_from_disk(monkeypatch):
    counted = _counted_afresh(monkeypatch)
    first = submodel_flops(SPEC, 2, 0.5)
    assert counted == [1] and len(first.stages) == len(first.exits) == 2 and min(first.exits) > 0
    entries = list((cache_root() / "flops").glob("*.json"))
    assert entries
    monkeypatch.setattr(flops, "_MEASURED", {})  # a new process: only the disk remembers
    assert submodel_flops(SPEC, 2, 0.5) == first and counted == [1]
    assert submodel_flops(SPEC, 3, 0.5).stages[:2] == first.stages and counted == [1, 1]  # another depth: counted


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda text: text[: len(text) // 2], "is unreadable"),
        (lambda text: text.replace('"stages": [', '"stages": [1, '), "does not match its checksum"),
        (lambda text: text.replace('\\"depth\\": 2', '\\"depth\\": 3'), "holds another entry"),
    ],
)
def test_a_damaged_flops_entry_is_named_counted_again_and_replaced(monkeypatch, capsys, damage, why):
    counted = _counted_afresh(monkeypatch)
    spec = ModelSpec(in_channels=1, image_height=8, image_width=8, num_classes=10, width=4, layers=(1, 1, 1, 1))
    first = submodel_flops(spec, 2)  # counted, or read from the entry an earlier case replaced
    counted.clear()
    path = entry_path("flops", {"spec": dataclasses.asdict(spec), "depth": 2, "width": 1.0, "torch": torch.__version__})
    path.write_text(damage(path.read_text()))
    monkeypatch.setattr(flops, "_MEASURED", {})
    assert submodel_flops(spec, 2) == first and counted == [1]
    err = capsys.readouterr().err
    assert err.startswith(f"fl-ee: warning: {path}: ") and why in err and err.count("\n") == 1, err
    monkeypatch.setattr(flops, "_MEASURED", {})
    assert submodel_flops(spec, 2) == first and counted == [1]  # the entry was replaced


def test_an_entry_with_counts_of_another_depth_is_not_used(monkeypatch, capsys):
    counted = _counted_afresh(monkeypatch)
    spec = ModelSpec(in_channels=1, image_height=8, image_width=8, num_classes=3, width=4)
    key = {"spec": dataclasses.asdict(spec), "depth": 1, "width": 1.0, "torch": torch.__version__}
    write_entry(entry_path("flops", key), key, {"stages": [5, 6], "exits": [1, 2]})  # two counts, depth 1
    assert submodel_flops(spec, 1).stages != (5,) and counted == [1]
    assert "not a flops entry (expected 1 FLOP counts" in capsys.readouterr().err


def test_a_json_entry_is_refused_when_edited_or_keyed_otherwise(tmp_path):
    path = tmp_path / "entry.json"
    write_entry(path, {"a": [1, 2]}, {"x": 1.5})
    assert read_entry(path, {"a": [1, 2]}) == {"x": 1.5}
    with pytest.raises(CacheDamaged, match="holds another entry"):
        read_entry(path, {"a": [1, 3]})
    path.write_text(path.read_text().replace("1.5", "2.5"))
    with pytest.raises(CacheDamaged, match="does not match its checksum"):
        read_entry(path, {"a": [1, 2]})


SMALL = ["--set", "data.num_clients=6", "--set", "rounds=3", "--set", "seed=11"]
PROBE = ("import runpy, sys\n"
         "runpy.run_module('fl_ee.cli', run_name='__main__', alter_sys=True)\n")
HEAVY = ("import atexit, sys\n"
         "heavy = ('torch', 'flwr', 'ray', 'torchvision', 'matplotlib', 'datasets', 'pyarrow', 'sklearn', 'numpy')\n"
         "atexit.register(lambda: print('heavy:', sorted(m for m in heavy if m in sys.modules), file=sys.stderr))\n")


@pytest.mark.e2e
def test_a_second_check_answers_alike_from_its_record_without_torch_flower_or_ray(capsys):
    """The first check makes and records the plan; the next, in a fresh process, prints the same from the record.

    It imports none of the heavy libraries the check itself needs (not even numpy).
    """
    assert main(["check", *SMALL]) == 0
    cold_out, cold_err = capsys.readouterr()
    assert "Plan per tier" in cold_out and list((cache_root() / "checks").glob("*.json"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    warm = subprocess.run([sys.executable, "-c", HEAVY + PROBE, "check", *SMALL], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout == cold_out
    assert warm.stderr == cold_err + "heavy: []\n"  # the same warnings, and none of them loaded


def test_a_damaged_check_record_is_named_and_the_check_made_again(capsys):
    assert main(["check", *SMALL, "--set", "seed=12"]) == 0
    cold_out, cold_err = capsys.readouterr()
    cfg = resolve_paths(load_config(None, {"data.num_clients": 6, "rounds": 3, "seed": 12}))
    record = entry_path(RECORD, check_key(cfg))
    entry = json.loads(record.read_text())
    entry["body"]["plan"]["tiers"][0]["clients"] = "six"
    record.write_text(json.dumps(entry))
    assert main(["check", *SMALL, "--set", "seed=12"]) == 0
    out, err = capsys.readouterr()
    assert out == cold_out and err == f"fl-ee: warning: {record}: does not match its checksum (edited or damaged); " \
                                       f"computing it again\n" + cold_err
