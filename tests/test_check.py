"""``fl-ee check``, the config holes it closes, and the warnings of degenerate configs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fl_ee.cli import main
from fl_ee.core.config import config_to_toml, load_config, preset_path
from fl_ee.core.errors import UserError
from fl_ee.federation.plan import make_plan, training_line
from fl_ee.federation.preflight import config_warnings, preflight
from inprocess import run_inprocess, sets
from sims.emulator import client_times, submodel_bytes
from strategies import ClientInfo

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--set", "data.num_clients=6", "--set", "rounds=3"]
WARMUP_PAST_THE_RUN = ("fl-ee: warning: training.kd_warmup_rounds = 8 is past the last round (3): distillation "
                       "(last-exit) never starts, so the run trains as with training.distillation = none\n")


def _check(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_prints_the_plan_of_the_quickstart(capsys):
    code, out, err = _check(capsys, *SMALL)
    assert code == 0 and err == WARMUP_PAST_THE_RUN  # the preset's warm-up is 8 rounds
    for text in ("config ok: digits", "Plan per tier", "iot", "phone", "laptop", "virtual clock (wait)"):
        assert text in out


def test_check_of_an_async_run_says_what_its_clock_does(capsys):
    code, out, _ = _check(capsys, *SMALL, "--set", "simulation.mode=async", "--set", "simulation.concurrency=4",
                          "--set", "simulation.buffer_size=2")
    assert code == 0
    assert "virtual clock (async): 4 clients training at once, a server version every 2 arrivals" in " ".join(
        out.split())


def test_check_shows_local_sgd_with_the_first_and_last_rounds_lr(capsys):
    code, out, _ = _check(capsys, *SMALL, "--set", "training.lr=0.1", "--set", "training.weight_decay=0.0005",
                          "--set", "training.lr_schedule=exp", "--set", "training.lr_decay=0.5")
    assert code == 0 and ("local SGD: 2 epochs of batch 16, lr 0.1 in round 1 to 0.025 in round 3 "
                          "(exp: x0.5 per round), momentum 0.9, weight decay 0.0005") in " ".join(out.split())
    step = load_config(None, {"rounds": 300, "training.lr": 0.1, "training.lr_schedule": "step",
                              "training.lr_milestones": [100, 200], "training.clip_norm": 5})
    assert training_line(step) == ("local SGD: 2 epochs of batch 16, lr 0.1 in round 1 to 0.001 in round 300 "
                                   "(step: x0.1 after rounds 100, 200), momentum 0.9, gradient norm clipped at 5")
    assert training_line(load_config(None)) == "local SGD: 2 epochs of batch 16, lr 0.05, momentum 0.9"
    assert training_line(load_config(None, {"personalisation.lr": 0.02})) == (
        "local SGD: 2 epochs of batch 16, lr 0.05, momentum 0.9; personal step and fine-tuning at lr 0.02 in every "
        "round")


def test_the_plan_is_the_run_cost_model():
    cfg = preflight(load_config(None, {"data.num_clients": 6, "rounds": 3}))
    plan = make_plan(cfg)
    assert [t.name for t in plan.tiers] == ["iot", "phone", "laptop"]
    assert sum(t.clients for t in plan.tiers) == 6
    from fl_ee.data.datasets import load_dataset, run_splits
    from fl_ee.models import EarlyExitNet
    from sims.tiers import assign_tiers

    data = load_dataset(cfg.data)
    model = EarlyExitNet(data.model_spec(cfg.model))
    tier_of = assign_tiers([t.share for t in cfg.tiers], 6, cfg.seed)
    clients = [ClientInfo(i, i, cfg.tiers[t].name, cfg.tiers[t].depth, len(s.train), len(s.test))
               for i, (t, s) in enumerate(zip(tier_of, run_splits(cfg)))]
    times = client_times(cfg, model, clients)
    size = submodel_bytes(model, [(2, 1.0), (3, 1.0), (4, 1.0)])
    for tier in plan.tiers:
        mine = [times[c.client_id].total_s for c in clients if c.tier == tier.name]
        assert tier.time_max_s == pytest.approx(max(mine))
        assert tier.down_bytes == tier.up_bytes == size[tier.depth, 1.0]
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
        (["tiers.0.width=0"], "tiers.0.width: must be in (0, 1]"),
        (["tiers.2.width=1.5"], "tiers.2.width: must be in (0, 1]"),
        (["strategy.name=fedadam", "tiers.1.width=0.5"],
         "tiers.1.width: strategy fedadam keeps state per whole tensor, so its tiers cannot be width-scaled"),
        (["simulation.mode=async", "strategy.name=qfedavg"],
         "simulation.mode: strategy QFedAvg overrides aggregate_train (a rule for whole rounds)"),
    ],
)
def test_check_fails_in_one_line_with_exit_2(overrides, needle, capsys):
    code, out, err = _check(capsys, *sets(overrides))
    assert code == 2 and out == ""
    assert err.startswith("fl-ee: error:") and needle in err and err.count("\n") == 1, err


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_argument_and_path_errors_answer_before_torch_or_flower_is_imported(tmp_path):
    """``sweep``, ``compare``, ``report``, ``resume``, ``run`` and ``check`` refuse bad arguments and paths fast.

    Before torch, Flower, Ray, SciPy or matplotlib is imported: in well under 0.5 s. So does
    ``check`` of a config whose dataset is not there (presets as shipped, without their data).
    """
    run = tmp_path / "run"  # an unfinished run whose only checkpoint is truncated
    (run / "checkpoint" / "round-000001").mkdir(parents=True)
    (run / "config.toml").write_text(config_to_toml(load_config(None, {})))
    (run / "rounds.jsonl").write_text('{"round": 1}\n')
    (run / "checkpoint" / "round-000001" / "state.json").write_text('{"format": 1, "round": 1, "config": {}}')
    (run / "checkpoint" / "round-000001" / "arrays.npz").write_bytes(b"PK\x03\x04\x14\x00")
    (tmp_path / "notes.txt").write_text("mine")
    missing = [["check", "fmnist-3tiers"], ["check", "cifar100-resnet"],
               ["check", "--set", "data.name=imagefolder", "--set", "data.root=nowhere"]]
    argvs = [*missing, ["sweep", "--grid", "strategy.name=a,,b"], ["sweep", "--grid", "nope=1,2"],
             ["sweep", "--seeds", "999"],
             ["sweep", "--out", "notes.txt"], ["sweep", "--grid", "rounds=1,2", "--set", "rounds=3"],
             ["compare", "missing", "notes.txt"], ["report", "notes.txt"], ["report", "."], ["resume", "."],
             ["resume", "run", "--set", "rounds=5"], ["resume", "run"], ["run", "."], ["run", "--out", "x" * 5000],
             ["run", "--set", "model.weights=missing.pt"], ["check", "--set", "model.weights=notes.txt"]]
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
    assert lines[-5].startswith(f"fl-ee: error: {Path('run', 'checkpoint', 'round-000001', 'arrays.npz')}: damaged "
                                "checkpoint (File is not a zip file), and no earlier one to fall back to")
    assert lines[-2:] == ["fl-ee: error: model.weights: missing.pt: no such file",
                          "fl-ee: error: model.weights: notes.txt: not a state-dict file fl-ee can read safely (it is "
                          "not a torch.save file of tensors; fl-ee loads tensors only, never other objects); save the "
                          "weights with torch.save(model.state_dict(), PATH)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]  # nothing made
    here = tmp_path.resolve()
    assert lines[:len(missing)] == [
        f"fl-ee: error: data.root: fashion-mnist not found under '{here / 'data'}' (no FashionMNIST/raw/"
        "train-images-idx3-ubyte); add --set data.root=DIR for the folder DIR that holds FashionMNIST/raw/, or --set "
        "data.download=true to download it",
        f"fl-ee: error: data.root: cifar100 not found under '{here / 'data'}' (no cifar-100-python/train); add --set "
        "data.root=DIR for the folder DIR that holds cifar-100-python/, or --set data.download=true to download it",
        f"fl-ee: error: data.root: imagefolder needs {here / 'nowhere' / 'train'}/<class>/<image> files; "
        f"{here / 'nowhere' / 'train'} is not a folder; add --set data.root=DIR for the folder DIR that holds "
        "train/<class>/ and test/<class>/ images"]


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
    cfg = load_config(None, {"tiers.0.availability": 0, "tiers.2.failure_rate": 1})
    assert config_warnings(cfg) == ["tier 'iot' has availability 0: its clients will never train; "
                                    "raise tiers.0.availability",
                                    "tier 'laptop' has failure_rate 1: its clients always drop out before they "
                                    "report; lower tiers.2.failure_rate"]
    cfg = load_config(None, {"tiers.0.availability": 0, "tiers.1.availability": 0, "tiers.2.failure_rate": 1})
    assert config_warnings(cfg) == ["no tier's clients ever finish a round (availability 0 or failure_rate 1): "
                                    "no client will ever train, so the run will not be a result"]
    assert config_warnings(load_config(None)) == []


SAME_AS_NONE = "so the run trains as with training.distillation = none"


@pytest.mark.parametrize(
    ("overrides", "lines"),
    [
        ({"rounds": 3}, [f"training.kd_warmup_rounds = 8 is past the last round (3): distillation (last-exit) never "
                         f"starts, {SAME_AS_NONE}"]),
        ({"rounds": 8}, []),  # the 8th round distils
        ({"rounds": 3, "training.distillation": "none"}, []),  # nothing switched on, nothing to say
        ({"training.distillation": "mutual", "training.kd_weight": 0},
         [f"training.kd_weight = 0: distillation (mutual) adds nothing, {SAME_AS_NONE}"]),
        ({f"tiers.{i}.depth": 1 for i in range(3)},
         [f"every client holds one exit: distillation (last-exit) needs two, {SAME_AS_NONE}"]),
        ({"training.exit_weights": [0, 0, 0, 0]},
         ["training.exit_weights [0.0, 0.0, 0.0, 0.0] are 0 at every exit the clients hold: no loss reads a label, "
          "so every exit stays at chance"]),
        ({"training.exit_weights": [0, 0, 0, 1]},
         ["tier 'iot' learns no labels: training.exit_weights are 0 at its exits 1-2",
          "tier 'phone' learns no labels: training.exit_weights are 0 at its exits 1-3"]),
        ({"training.exit_weights": [0, 0, 1, 1], "data.num_clients": 2, "tiers.0.share": 0.1, "tiers.1.share": 0.6},
         ["tier 'iot' gets no client (share 0.1 of 2 clients); raise tiers.0.share or data.num_clients"]),
        ({"exit_policy.calibration_fraction": 0.95},
         ["exit_policy.calibration_fraction = 0.95 holds out 95% of each client's training samples to calibrate: "
          "clients train on 5% of them"]),
        ({"exit_policy.calibration_fraction": 0.49}, []),
        ({"personalisation.mode": "finetune", "training.lr_schedule": "cosine"},
         ["the last round's lr is 0 (training.lr_schedule = cosine): the final evaluation's fine-tuning "
          "(personalisation.mode = finetune) trains at it and measures the received model unchanged; set "
          "personalisation.lr (or training.lr_min above 0)"]),
        ({"personalisation.mode": "finetune", "training.lr_schedule": "cosine", "training.lr_min": 0.001}, []),
        ({"personalisation.mode": "finetune", "training.lr_schedule": "cosine", "personalisation.lr": 0.02}, []),
        ({"personalisation.mode": "exits", "training.lr_schedule": "cosine"}, []),  # earlier rounds train the heads
        ({"simulation.straggler_policy": "overselect", "simulation.overcommit": 0},
         ["simulation.overcommit = 0: overselect samples no extra client, so the run is the same as with "
          "straggler_policy = wait"]),
        ({"strategy.fraction_evaluate": 0, "simulation.target_accuracy": 0.9},
         ["personalisation.mode = exits is never measured: no client evaluates (strategy.fraction_evaluate = 0), so "
          "the summary has the global model only",
          "simulation.target_accuracy is never reached: no client evaluates (strategy.fraction_evaluate = 0), so "
          "time_to_accuracy_s stays null"]),
        ({"strategy.fraction_evaluate": 0, "personalisation.mode": "none"}, []),
        ({"strategy.fraction_evaluate": 0, "strategy.final_evaluate_all": True, "simulation.target_accuracy": 0.9},
         []),
        ({"strategy.fraction_evaluate": 0, "personalisation.mode": "none", "data.unseen_fraction": 0.2},
         ["data.unseen_fraction holds 4 clients out of training that are never evaluated: no client evaluates "
          "(strategy.fraction_evaluate = 0)"]),
        # seed 1 draws client 2 as one of the 5 unseen of 10, and puts it alone in tier iot
        ({"seed": 1, "data.num_clients": 10, "tiers.0.share": 0.1, "tiers.1.share": 0.6, "data.unseen_fraction": 0.5},
         ["every client of tier 'iot' (1) is unseen (data.unseen_fraction = 0.5): none of them trains, so the tier "
          "has no participating figures; lower data.unseen_fraction or raise the tier's share"]),
        ({"seed": 0, "data.num_clients": 10, "tiers.0.share": 0.1, "tiers.1.share": 0.6, "data.unseen_fraction": 0.5},
         []),  # seed 0 keeps iot's one client (client 1) in training
    ],
)
def test_settings_that_cannot_take_effect_or_leave_nothing_to_train_are_warnings(overrides, lines):
    assert config_warnings(load_config(None, overrides)) == lines


def test_ic_only_with_every_round_training_the_backbone_is_refused():
    with pytest.raises(UserError, match=r"^training.backbone_rounds: must be below rounds \(3\), or no round trains "):
        load_config(None, {"rounds": 3, "training.scheme": "ic-only", "training.backbone_rounds": 3})


def test_every_shipped_preset_runs_without_a_warning():
    presets = sorted(p.stem for p in preset_path("quickstart").parent.glob("*.toml"))
    assert {"quickstart", "fmnist-3tiers", "cifar10-resnet", "cifar100-resnet", "cifar10-resnet-full",
            "cifar100-resnet-full", "stragglers"} <= set(presets)
    for preset in presets:
        assert config_warnings(load_config(preset)) == [], preset


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["strategy.fraction_evaluate=0"], "no client evaluates (global model only);"),
        (["strategy.fraction_evaluate=0", "strategy.final_evaluate_all=true"],
         "every client evaluates after the last round only;"),
        (["strategy.fraction_evaluate=0.2", "strategy.final_evaluate_all=true"],
         "20% of clients evaluate, all of them after the last round;"),
    ],
)
def test_check_says_who_evaluates(capsys, overrides, says):
    code, out, _ = _check(capsys, *SMALL, *sets(overrides))
    assert code == 0 and says in " ".join(out.split())


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
    off = [f"tiers.{i}.availability=0" for i in range(3)]
    _, summary = run_inprocess(tmp_path / "idle", ["rounds=2", "data.num_clients=4", "eval_every=2", *off])
    err = capsys.readouterr().err
    before, after = ("no tier's clients ever finish a round (availability 0 or failure_rate 1): no client will ever "
                     "train, so the run will not be a result"), "no client trained in any of the 2 rounds"
    assert err.count(before) == 1 and err.count(after) == 1  # the config's before the run, the run's after it
    assert f"fl-ee: warning: {before}\n" in err and err.index(before) < err.index(after)
    written = json.loads((tmp_path / "idle" / "summary.json").read_text())
    assert written["warnings"] == summary["warnings"] == [
        before,  # the config's, then the run's
        f"training.kd_warmup_rounds = 8 is past the last round (2): distillation (last-exit) never starts, "
        f"{SAME_AS_NONE}",
        f"{after}: the global model kept its initial weights, so this run is not a result (look at the tiers' "
        f"availability and the straggler policy)"]


def test_rounds_without_training_are_listed():
    from fl_ee.results.summary import run_warnings

    def clock(ok: int) -> dict:
        return {"by_tier": {"a": {"sampled": 2, "ok": ok}, "b": {"sampled": 0, "ok": 0}}}

    assert run_warnings([clock(1), clock(2)]) == []
    assert run_warnings([clock(0), clock(0), clock(1), clock(0)]) == [
        "no client trained in 3 of 4 rounds (round 1-2, 4): the global model did not move in them"]


def test_the_plan_leaves_unseen_clients_out_of_training(capsys):
    plan = make_plan(preflight(load_config(None, {"data.unseen_fraction": 0.2, "rounds": 3})))
    assert sum(t.clients for t in plan.tiers) == 16  # 20 clients, round(0.2 x 20) = 4 unseen
    assert plan.sampled == 8.0  # fraction_train 0.5 of the 16 that train, every round
    code, out, _ = _check(capsys, "--set", "data.unseen_fraction=0.2", "--set", "rounds=3")
    assert code == 0 and "over 20 clients (dirichlet alpha 0.5), 4 of them unseen" in " ".join(out.split())
