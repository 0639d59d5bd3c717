"""The plug-in contract end to end: the strategy tutorial's example as written, entry points, a freezing strategy."""

import json
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flwr.app import ArrayRecord

from fl_ee.cli import main
from fl_ee.core.config import load_config
from fl_ee.data.datasets import load_dataset
from fl_ee.federation.globaleval import evaluate_global
from fl_ee.federation.server import initial_model
from inprocess import run_inprocess
from strategies.registry import available

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "custom-strategy.md"
TINY = ["--set", "rounds=2", "--set", "eval_every=1", "--set", "data.num_clients=5",
        "--set", "strategy.fraction_train=1.0"]

FROZEN = '''from strategies import DepthAwareStrategy


class Frozen(DepthAwareStrategy):
    """Keeps every shared tensor as it is."""

    def aggregate_tensor(self, key, values, weights, current):
        return current
'''


def readme_example() -> tuple[str, str, list[str]]:
    """The custom-strategy tutorial's example: (module file name, its code, the command's arguments)."""
    text = TUTORIAL.read_text()
    match = re.search(r"```python\n# (\w+\.py)\n(.*?)```\s*```bash\n(fl-ee run [^\n]*)\n```", text, re.S)
    assert match, "docs/tutorials/custom-strategy.md lost its example"
    filename, code, command = match.groups()
    return filename, f"# {filename}\n{code}", shlex.split(command)[1:]


def fl_ee(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fl_ee.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def install_entry_point(folder: Path, name: str, value: str, group: str = "fl_ee.strategies") -> None:
    """Register ``name`` in an entry-point ``group`` the way an installed package does (a dist-info)."""
    info = folder / "frozen_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: frozen-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {value}\n")


@pytest.mark.e2e
def test_readme_example_runs_as_written(tmp_path):
    filename, code, args = readme_example()
    (tmp_path / filename).write_text(code)
    assert 12 <= len(code.strip().splitlines()) <= 20  # about 15 lines
    done = fl_ee([*args, *TINY, "--out", "run"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    resolved = load_config(str(tmp_path / "run" / "config.toml"))
    assert resolved.strategy.name == "my_strategies:TrimmedMean" and resolved.strategy.options == {"trim": 1}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["accuracy"]["personalised"]["mean"] > 0.3  # 10 classes: chance is 0.1
    # its option check reports through the same one-line error path
    bad = fl_ee([*args, "--set", "strategy.options.trim=-1", "--out", "bad"], cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "fl-ee: error: strategy.options.trim: must be an integer >= 0"


@pytest.mark.e2e
def test_a_strategy_that_keeps_current_freezes_the_global_model(tmp_path, monkeypatch):
    """An entry-point plug-in found by name; the run goes through the in-process grid (the server's side is
    what the strategy changes; the tutorial's example above runs through the CLI on Ray)."""
    (tmp_path / "frozen_plugin.py").write_text(FROZEN)
    install_entry_point(tmp_path, "frozen", "frozen_plugin:Frozen")
    monkeypatch.syspath_prepend(str(tmp_path))
    run_inprocess(tmp_path / "run", ["strategy.name=frozen", *TINY[1::2]], checkpoints=False)

    cfg = load_config(str(tmp_path / "run" / "config.toml"))
    data = load_dataset(cfg.data)
    model = initial_model(cfg, data)
    with ThreadPoolExecutor(1) as thread:
        untrained = evaluate_global(ArrayRecord(model.state_dict()), data, model, cfg.max_depth, thread)()["by_exit"]
    rounds = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r["evaluate"]["global"]["by_exit"] for r in rounds] == [untrained, untrained]  # frozen every round
    assert all(any(c["outcome"] == "ok" for c in r["clock"]["clients"]) for r in rounds)  # ... although updates came
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["accuracy"]["global"]["by_exit"] == untrained
    assert max(untrained.values()) < 0.3  # still the random initial model


def test_list_strategies_includes_entry_point_plugins(tmp_path, monkeypatch, capsys):
    (tmp_path / "frozen_plugin.py").write_text(FROZEN)
    install_entry_point(tmp_path, "frozen", "frozen_plugin:Frozen")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["list", "strategies"]) == 0
    listed = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert listed["frozen"] == "Keeps every shared tensor as it is."
    assert {"depthfl", "exclusive", "feddyn", "fedadam", "fedyogi", "qfedavg"} <= set(listed)


def test_a_plugin_installed_after_a_lookup_is_found_once_on_the_path(tmp_path, monkeypatch):
    assert "frozen" not in available()  # read (and kept) before the plug-in exists
    install_entry_point(tmp_path, "frozen", "frozen_plugin:Frozen")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert available()["frozen"] == "frozen_plugin:Frozen"


def test_plugin_paths_and_options_fail_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "frozen_plugin.py").write_text(FROZEN)
    monkeypatch.chdir(tmp_path)  # module:Class paths import from the working directory
    for overrides, needle in [
        (["strategy.name=frozen_plugin:Nope"],
         "strategy.name: cannot import 'frozen_plugin:Nope': module 'frozen_plugin' has no attribute 'Nope'"),
        (["strategy.name=frozen_plugin:Frozen", "strategy.options.speed=2"],
         "strategy.options.speed: unknown option for frozen_plugin:Frozen; it takes fednova"),
    ]:
        code = main(["run", *[f"--set={o}" for o in overrides], "--out", "run"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err == f"fl-ee: error: {needle}"
    assert not (tmp_path / "run").exists()
