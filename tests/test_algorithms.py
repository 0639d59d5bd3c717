"""Client algorithms (fl_ee/learning/algorithm.py): the shipped modes as before, plug-ins by name, faulty plug-ins."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import MessageType
from test_client import _Client, _message
from test_clock import _times
from test_plugins import fl_ee, install_entry_point

from fl_ee.cli import main
from fl_ee.core.atomic import read_npz
from fl_ee.core.config import config_from_dict
from fl_ee.core.errors import UserError
from fl_ee.core.plugins import check_option
from fl_ee.learning.algorithm import ClientAlgorithm, LocalTraining, Losses, build_algorithm, train_round
from fl_ee.models import EarlyExitNet, ModelSpec
from fl_ee.results.rundir import CLIENT_ERRORS
from fl_ee.wire.protocol import CLIENT_STATE, EvaluateReply, TrainReply, payload_of
from inprocess import run_inprocess, sets

pytestmark = pytest.mark.usefixtures("task_identity")

# Each shipped mode, called as the server calls it, replied these numbers before the modes became
# ClientAlgorithm classes (the ClientApp as of commit d89a00d): (train loss, personal loss) of rounds 1
# and 2, then the exit accuracies and the ensemble's of an evaluation in round 2. Client 1 of 4, depth 3.
BEFORE = {
    "exits": ([(5.90373346540663, 5.215167138311598), (5.94766452577379, 5.2677829133139715)],
              (0.6944444444444444, 0.6527777777777778, 0.5833333333333334), 0.6388888888888888),
    "self-distill": ([(5.90373346540663, 5.510667999585469), (5.94766452577379, 5.584899981816609)],
                     (0.6527777777777778, 0.5694444444444444, 0.375), 0.5694444444444444),
    "finetune": ([(5.593463844723171, None), (5.783090962304009, None)],
                 (0.6388888888888888, 0.7777777777777778, 0.6388888888888888), 0.6666666666666666),
    "none": ([(5.593463844723171, None), (5.783090962304009, None)],
             (0.1111111111111111, 0.3888888888888889, 0.20833333333333334), 0.3888888888888889),
}

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "client-algorithm.md"


@pytest.mark.e2e
@pytest.mark.parametrize("mode", list(BEFORE))
def test_each_shipped_mode_replies_what_it_did_before_it_became_a_client_algorithm(mode):
    extra = {"labelled_fraction": 0.5} if mode == "self-distill" else {}
    cfg = config_from_dict({"data": {"num_clients": 4}, "training": {"batch_size": 32},
                            "personalisation": {"mode": mode, "epochs": 2, **extra}})
    client = _Client(1)
    losses = []
    for rnd in (1, 2):
        r = payload_of(client(_message(MessageType.TRAIN, 3, rnd, cfg, seed=rnd)), TrainReply)
        losses.append((r.train_loss, r.personal_loss))
    e = payload_of(client(_message(MessageType.EVALUATE, 3, 2, cfg, seed=2)), EvaluateReply)
    trained, exits, ensemble = BEFORE[mode]
    assert losses == [(pytest.approx(t, rel=1e-6), None if p is None else pytest.approx(p, rel=1e-6))
                      for t, p in trained]
    assert e.exit_accuracy == exits and e.ensemble_accuracy == ensemble


# ------------------------------------------------------------------------------ plug-ins by name

class Scaled(ClientAlgorithm):
    """The shared step, with the learning rate scaled by `factor`; keeps the round it last trained in."""

    def __init__(self, cfg, *, factor: float = 1.0):
        super().__init__(cfg)
        check_option(isinstance(factor, (int, float)) and factor > 0, "factor", "must be a number > 0")
        self.factor = factor

    def train(self, local):
        local.training = local.training.model_copy(update={"lr": local.training.lr * self.factor})
        return Losses(local.shared_step())

    def kept(self, local):
        return {"scaled/round": np.array([local.server_round])}


class NotAnAlgorithm:
    pass


def test_a_users_algorithm_by_path_with_its_options_and_its_state():
    cfg = config_from_dict({"data": {"num_clients": 4}, "personalisation": {
        "mode": "test_algorithms:Scaled", "options": {"factor": 0.0001}}})
    algorithm = build_algorithm(cfg)
    assert isinstance(algorithm, Scaled) and algorithm.factor == 0.0001 and algorithm.namespace == "scaled"
    client = _Client(0)
    sent = _message(MessageType.TRAIN, 2, 4, cfg, seed=0)
    received = {k: a.numpy().copy() for k, a in sent.content["arrays"].items()}
    reply = client(sent)
    assert set(reply.content["arrays"]) == set(received)  # the shared slice, nothing more
    assert {k: a.numpy().tolist() for k, a in client.state[CLIENT_STATE].items()} == {"scaled/round": [4]}
    moved = max(float(np.abs(a.numpy() - received[k]).max()) for k, a in reply.content["arrays"].items())
    assert 0 < moved < 1e-4  # trained, at a ten-thousandth of the learning rate


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"personalisation.mode": "nosuch"},
     "personalisation.mode: unknown client algorithm 'nosuch'; choose one of apfl, ditto, exits, fedbabu, fedper, "
     "fedrep, finetune, lg-fedavg, none, self-distill or package.module:Class"),
    ({"personalisation.mode": "test_algorithms:Nope"},
     "personalisation.mode: cannot import 'test_algorithms:Nope': module 'test_algorithms' has no attribute 'Nope'"),
    ({"personalisation.mode": "test_algorithms:NotAnAlgorithm"},
     "personalisation.mode: 'test_algorithms:NotAnAlgorithm' is not a fl_ee.learning.algorithm.ClientAlgorithm "
     "subclass"),
    ({"personalisation.options": {"factor": 2}}, "personalisation.options.factor: unknown option for exits; it takes "
                                                 "none"),
    ({"personalisation.mode": "test_algorithms:Scaled", "personalisation.options": {"factor": -1}},
     "personalisation.options.factor: must be a number > 0"),
])
def test_bad_algorithm_names_and_options_name_their_key(overrides, needle):
    raw = {"personalisation": {"mode": overrides.get("personalisation.mode", "exits"),
                               "options": overrides.get("personalisation.options", {})}}
    with pytest.raises(UserError) as info:
        build_algorithm(config_from_dict(raw))
    assert str(info.value) == needle


def test_a_bad_algorithm_stops_a_run_in_one_line_before_anything_starts(tmp_path, capsys):
    assert main(["run", "--set", "personalisation.mode=nosuch", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fl-ee: error: personalisation.mode: unknown client algorithm 'nosuch'")
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_list_algorithms_shows_the_shipped_modes_and_entry_point_plugins(tmp_path, monkeypatch, capsys):
    (tmp_path / "scaled_plugin.py").write_text(
        "from fl_ee.learning.algorithm import ClientAlgorithm\n\n\n"
        "class Plain(ClientAlgorithm):\n    \"\"\"Nothing but the shared step.\"\"\"\n")
    install_entry_point(tmp_path, "plain", "scaled_plugin:Plain", group="fl_ee.client_algorithms")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["list", "algorithms"]) == 0
    listed = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert set(listed) == {"exits", "self-distill", "finetune", "none", "fedper", "lg-fedavg", "fedrep", "fedbabu",
                           "ditto", "apfl", "plain"}
    assert listed["plain"] == "Nothing but the shared step."
    cfg = config_from_dict({"personalisation": {"mode": "plain"}})
    assert type(build_algorithm(cfg)).__name__ == "Plain"


# ------------------------------------------------------------------------------ faulty plug-ins

class Faulty(ClientAlgorithm):
    """Fails in a different way on each client: raises, returns garbage, keeps garbage, evaluates garbage."""

    def train(self, local: LocalTraining):
        if local.client_id == 1:
            raise RuntimeError("client 1 cannot train")
        loss = local.shared_step()
        return "not losses" if local.client_id == 2 else Losses(loss)

    def kept(self, local):
        return {"faulty/note": "not an array"} if local.client_id == 3 else {}

    def evaluation(self, local):
        return (local.model, "heads") if local.client_id == 0 else (local.model, None)


@pytest.mark.e2e
def test_a_faulty_algorithm_fails_its_clients_with_their_tracebacks_filed(tmp_path):
    out = tmp_path / "run"
    run_inprocess(out, ["rounds=1", "data.num_clients=5", "strategy.fraction_train=1.0", "training.batch_size=256",
                        "personalisation.mode=test_algorithms:Faulty",
                        *[f"tiers.{i}.{k}={v}" for i in range(3) for k, v in (("availability", 1.0),
                                                                             ("failure_rate", 0.0))]])
    record = json.loads((out / "rounds.jsonl").read_text())
    outcomes = {c["client_id"]: c["outcome"] for c in record["clock"]["clients"]}
    assert outcomes == {0: "ok", 1: "failed", 2: "failed", 3: "failed", 4: "ok"}
    log = (out / CLIENT_ERRORS).read_text()
    assert log.count("Traceback") == 4
    assert "round 1, train, client 1" in log and "RuntimeError: client 1 cannot train" in log
    assert "round 1, train, client 2" in log and "test_algorithms:Faulty.train returned 'not losses'" in log
    assert "round 1, train, client 3" in log and "test_algorithms:Faulty.kept: entry 'faulty/note' = str" in log
    assert "round 1, evaluate, client 0" in log and "test_algorithms:Faulty.evaluation returned" in log
    assert not (out / "checkpoint" / "clients" / "00003").exists()  # a failed client saves nothing


class Stray(ClientAlgorithm):
    """Keeps an array under another algorithm's namespace."""

    def train(self, local):
        return Losses(1.0)

    def kept(self, local):
        return {"exits/0.weight": torch.zeros(2)}


def test_an_algorithm_may_keep_state_only_under_its_own_namespace():
    cfg = config_from_dict({})
    local = LocalTraining(None, None, None, 1, 0, None, cfg.training, False, {}, cfg)  # train_round reads none
    with pytest.raises(TypeError, match=r"Stray.kept: entry 'exits/0.weight' = Tensor; every entry must be a "
                                        r"numeric array \(torch or NumPy\) named stray/<name>"):
        train_round(Stray(cfg), local)


# ------------------------------------------------------------------------------ the virtual clock

class Costly(ClientAlgorithm):
    """Charges a GFLOP per training sample beyond the shared step."""

    def train_flops(self, flops, depth, num_train, frozen):
        return 1e9 * num_train


class Negative(ClientAlgorithm):
    def train_flops(self, flops, depth, num_train, frozen):
        return -1


def test_the_clock_charges_what_an_algorithm_says_it_computes():
    # the tier computes 1 GFLOP/s and its one client holds 10 samples (test_clock._times)
    assert _times("test_algorithms:Costly").compute_s == pytest.approx(_times("none").compute_s + 10.0)
    assert _times("test_algorithms:Costly").upload_s == _times("none").upload_s  # it sends its slice only
    with pytest.raises(UserError, match=r"^personalisation.mode: test_algorithms:Negative.train_flops returned -1; "
                                        r"it must return FLOPs, a number >= 0$"):
        _times("test_algorithms:Negative")


# ------------------------------------------------------------------------------ the tutorial's example

def readme_algorithm() -> tuple[str, str, list[str]]:
    """The client-algorithm tutorial's example: (module file name, its code, the command's --set overrides)."""
    section = TUTORIAL.read_text()
    match = re.search(r"```python\n# (\w+\.py)\n(.*?)```\s*```bash\nfl-ee run ([^\n]*)\n```", section, re.S)
    assert match, "docs/tutorials/client-algorithm.md lost its example"
    filename, code, args = match.groups()
    return filename, f"# {filename}\n{code}", [a for a in shlex.split(args) if a != "--set"]


@pytest.mark.e2e
def test_the_readmes_client_algorithm_runs_as_written(tmp_path, monkeypatch):
    filename, code, overrides = readme_algorithm()
    assert len([line for line in code.splitlines() if line.strip()]) <= 25
    (tmp_path / filename).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    _, summary = run_inprocess(out, ["rounds=2", "eval_every=2", "data.num_clients=6", *overrides])
    assert summary["accuracy"]["personalised"]["mean"] > 0.2  # 10 classes: chance is 0.1
    saved = [read_npz(p) for p in (out / "checkpoint" / "clients").glob("*/round-*.npz")]
    head = {f"lasthead/{k}" for k in EarlyExitNet(ModelSpec(1, 8, 8, 10)).exits[-1].state_dict()}
    assert saved and all(set(keys) == head for keys in saved)  # the tensors of each client's deepest head


@pytest.mark.e2e
def test_the_readmes_client_algorithm_runs_through_ray_from_the_working_directory(tmp_path):
    filename, code, overrides = readme_algorithm()
    (tmp_path / filename).write_text(code)
    tiny = sets(["rounds=2", "eval_every=2", "data.num_clients=5"])
    done = fl_ee(["run", *sets(overrides), *tiny, "--out", "run"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "run" / CLIENT_ERRORS).exists()  # every Ray worker imported it
    saved = [read_npz(p) for p in (tmp_path / "run" / "checkpoint" / "clients").glob("*/round-*.npz")]
    assert saved and all(keys and all(k.startswith("lasthead/") for k in keys) for keys in saved)
