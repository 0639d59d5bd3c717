"""Personalised-FL baselines (fl_ee/learning/pfl/): each method's step by hand, what it sends and keeps, its cost
on the virtual clock, its options, one in-process run each, and a resumed run."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MessageType
from test_client import _Client, _message
from test_clock import HEAD, HEAD_BYTES, STAGE, _times
from test_personal import _toy
from test_resume import FAST, CopyIn, _poison_stale_exits, _same_results

from fl_ee.core.atomic import read_npz
from fl_ee.core.config import TrainingConfig, config_from_dict, load_config, parse_overrides
from fl_ee.core.errors import UserError
from fl_ee.data.datasets import load_dataset
from fl_ee.federation.server import initial_model
from fl_ee.learning.algorithm import (
    ClientAlgorithm,
    LocalEvaluation,
    LocalTraining,
    Losses,
    build_algorithm,
    evaluation_model,
    train_round,
)
from fl_ee.learning.pfl.apfl import train_apfl
from fl_ee.learning.pfl.ditto import train_ditto
from fl_ee.learning.training import exit_loss, stage_features, train_exits, train_joint
from fl_ee.models import EarlyExitNet, ModelSpec
from fl_ee.results.rundir import CLIENT_ERRORS
from fl_ee.wire.protocol import CLIENT_STATE
from inprocess import resume_inprocess, run_inprocess

pytestmark = pytest.mark.usefixtures("task_identity")

METHODS = ("fedper", "lg-fedavg", "fedrep", "fedbabu", "ditto", "apfl")
SPEC = ModelSpec(1, 8, 8, 3)
ONE_BATCH = TrainingConfig(batch_size=48, lr=0.1, momentum=0.0)  # one SGD step per epoch over _toy()'s 48 samples


def _models() -> tuple[EarlyExitNet, EarlyExitNet]:
    """(a client's own model v, the received global w): two different initialisations of one depth-2 submodel."""
    torch.manual_seed(0)
    return EarlyExitNet(SPEC, depth=2), EarlyExitNet(SPEC, depth=2)


def _params(model: EarlyExitNet) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _gradient(model: EarlyExitNet, x, y, cfg: TrainingConfig) -> dict[str, torch.Tensor]:
    """The gradient of the exits' loss over all of (x, y) at ``model``'s weights."""
    model = copy.deepcopy(model)
    exit_loss(model(x), y, cfg).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def _close(model: EarlyExitNet, expected: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(p, expected[name], rtol=1e-4, atol=1e-6) for name, p in model.named_parameters())


# ------------------------------------------------------------------------- each method's step by hand

def test_ditto_takes_the_proximal_gradient_step_toward_the_received_model():
    x, y = _toy()
    v, w = _models()
    lam, before, received = 0.5, _params(v), _params(w)
    g = _gradient(v, x, y, ONE_BATCH)
    train_ditto(v, w, x, y, ONE_BATCH, 1, torch.Generator().manual_seed(0), lam)
    # v <- v - lr (grad f(v) + lam (v - w))
    assert _close(v, {n: before[n] - 0.1 * (g[n] + lam * (before[n] - received[n])) for n in before})
    assert all(torch.equal(p, received[n]) for n, p in w.named_parameters())  # the global model is left alone


@pytest.mark.parametrize("adaptive", [False, True])
def test_apfl_moves_v_by_alpha_times_the_mixtures_gradient_and_alpha_by_its_own(adaptive):
    x, y = _toy()
    v, w = _models()
    alpha, lr, before, received = 0.25, 0.01, _params(v), _params(w)
    mixed = copy.deepcopy(v)
    with torch.no_grad():
        for name, p in mixed.named_parameters():
            p.copy_(alpha * before[name] + (1 - alpha) * received[name])
    g = _gradient(mixed, x, y, ONE_BATCH)
    d_alpha = sum(float(((before[n] - received[n]) * g[n]).sum()) for n in g)  # <v - w, grad f(v_bar)>
    expected_alpha = alpha - lr * d_alpha if adaptive else alpha
    assert 0 < expected_alpha < 1 and (expected_alpha != alpha) == adaptive  # inside the clip, and moved if adaptive

    _, new_alpha = train_apfl(v, w, x, y, ONE_BATCH.model_copy(update={"lr": lr}), 1,
                              torch.Generator().manual_seed(0), alpha, adaptive)
    assert _close(v, {n: before[n] - lr * alpha * g[n] for n in before})  # v <- v - lr alpha grad f(v_bar)
    assert new_alpha == pytest.approx(expected_alpha, rel=1e-4)
    assert all(torch.equal(p, received[n]) for n, p in w.named_parameters())


def _local(mode: str, model: EarlyExitNet, options: dict | None = None) -> LocalTraining:
    x, y = _toy()
    cfg = config_from_dict({"training": {"batch_size": 16, "lr": 0.05},
                            "personalisation": {"mode": mode, "options": options or {}}})
    return LocalTraining(model, x, y, 1, 0, torch.Generator().manual_seed(3), cfg.training, False, {}, cfg)


def test_fedrep_trains_the_heads_over_the_received_backbone_then_the_backbone_under_those_heads():
    _, received = _models()
    local = _local("fedrep", copy.deepcopy(received), {"head_epochs": 2})
    losses, kept = train_round(build_algorithm(local.cfg), local)

    g, t = torch.Generator().manual_seed(3), local.training  # by hand, from the same generator:
    heads = copy.deepcopy(received.exits)  # first the heads, two epochs over the received backbone's features,
    head_loss = train_exits(heads, stage_features(received, local.x), local.y, t, 2, g)
    body = copy.deepcopy(received)  # then the backbone, one epoch, under those heads held fixed
    body.exits.load_state_dict(heads.state_dict())
    body.exits.requires_grad_(False)
    body_loss = train_joint(body, local.x, local.y, t, g)

    assert losses == Losses(pytest.approx(body_loss), pytest.approx(head_loss))
    assert all(torch.equal(value, body.state_dict()[k]) for k, value in local.model.state_dict().items())
    assert kept.keys() == {f"fedrep/{k}" for k in received.state_dict() if k.startswith("exits.")}


def test_fedbabu_trains_the_backbone_and_never_the_heads():
    _, received = _models()
    local = _local("fedbabu", copy.deepcopy(received))
    _, kept = train_round(build_algorithm(local.cfg), local)
    after, before = local.model.state_dict(), received.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("exits."))
    assert all(not torch.equal(after[k], before[k]) for k in before if k.startswith("stages.") and "weight" in k)
    assert kept == {}


def _evaluated(mode: str, state: dict, options: dict | None = None):
    """What ``mode`` evaluates, given the received model w of :func:`_models` and the client's ``state``."""
    _, w = _models()
    x, y = _toy()
    cfg = config_from_dict({"personalisation": {"mode": mode, "options": options or {}}})
    local = LocalEvaluation(w, x, y, 1, 0, torch.Generator().manual_seed(0), cfg.training, state, cfg)
    return evaluation_model(build_algorithm(cfg), local)


def _kept(namespace: str, model: EarlyExitNet, prefix: str = "") -> dict[str, torch.Tensor]:
    return {f"{namespace}/{k}": t for k, t in model.state_dict().items() if k.startswith(prefix)}


@pytest.mark.parametrize(("mode", "namespace", "personal"), [
    ("fedper", "fedper", "exits."), ("fedrep", "fedrep", "exits."), ("lg-fedavg", "lg-fedavg", "stages."),
    ("ditto", "ditto", ""),
])
def test_evaluation_lays_the_kept_part_over_the_received_model(mode, namespace, personal):
    v, w = _models()
    model, heads = _evaluated(mode, _kept(namespace, v, personal))
    assert heads is None
    for k, value in model.state_dict().items():
        assert torch.equal(value, (v if k.startswith(personal) else w).state_dict()[k]), k
    fresh, _ = _evaluated(mode, {})  # a client that never trained: the received model
    assert all(torch.equal(value, w.state_dict()[k]) for k, value in fresh.state_dict().items())


@pytest.mark.parametrize(("options", "alpha"), [({}, 0.25), ({"alpha": 0.5}, 0.5), ({"adaptive": True}, 0.625)])
def test_apfl_evaluates_the_mixture_of_the_kept_model_and_the_received_one(options, alpha):
    v, w = _models()
    state = {**_kept("apfl", v), "apfl/alpha": torch.tensor(0.625, dtype=torch.float64)}  # read when adaptive
    model, _ = _evaluated("apfl", state, options)
    mine, theirs = dict(v.named_parameters()), dict(w.named_parameters())
    assert _close(model, {n: alpha * mine[n].detach() + (1 - alpha) * theirs[n].detach() for n in mine})


def test_fedbabu_fine_tunes_a_copy_of_the_whole_model_or_of_its_heads_before_evaluating():
    _, w = _models()
    model, heads = _evaluated("fedbabu", {})
    assert heads is None and all(not torch.equal(p, dict(w.named_parameters())[n]) for n, p in model.named_parameters()
                                 if n.endswith("weight"))
    model, heads = _evaluated("fedbabu", {}, {"finetune": "head", "finetune_epochs": 1})
    assert all(torch.equal(value, w.state_dict()[k]) for k, value in model.state_dict().items())
    assert all(not torch.equal(value, w.exits.state_dict()[k]) for k, value in heads.state_dict().items())


# ------------------------------------------------------------------------- what goes back, what stays

@pytest.mark.e2e
@pytest.mark.parametrize(("mode", "sends", "keeps"), [
    ("fedper", "stages.", "exits."),
    ("fedrep", "stages.", "exits."),
    ("lg-fedavg", "exits.", "stages."),
    ("fedbabu", "stages.", None),
    ("ditto", "", ""),
    ("apfl", "", ""),
])
def test_each_method_sends_its_shared_part_and_keeps_its_personal_part(mode, sends, keeps):
    cfg = config_from_dict({"data": {"num_clients": 4}, "training": {"batch_size": 32},
                            "personalisation": {"mode": mode}})
    client = _Client(1)
    message = _message(MessageType.TRAIN, 2, 1, cfg, seed=0)
    held = set(message.content["arrays"])
    reply = client(message)
    assert set(reply.content["arrays"]) == {k for k in held if k.startswith(sends)}
    namespace = build_algorithm(cfg).namespace
    kept = set(client.state[CLIENT_STATE]) if CLIENT_STATE in client.state else set()
    assert kept == (set() if keeps is None else {f"{namespace}/{k}" for k in held if k.startswith(keeps)})


def _spoiled(message, prefix: str):
    """The message with every received tensor under ``prefix`` zeroed."""
    arrays = {k: np.zeros_like(a.numpy()) if k.startswith(prefix) else a.numpy()
              for k, a in message.content["arrays"].items()}
    message.content["arrays"] = ArrayRecord({k: torch.from_numpy(v) for k, v in arrays.items()})
    return message


@pytest.mark.e2e
@pytest.mark.parametrize(("mode", "personal"), [("fedper", "exits."), ("fedrep", "exits."), ("lg-fedavg", "stages.")])
def test_once_a_client_keeps_its_part_the_received_one_plays_no_part(mode, personal):
    cfg = config_from_dict({"data": {"num_clients": 4}, "training": {"batch_size": 32},
                            "personalisation": {"mode": mode}})

    def second_round(spoil: bool) -> dict[str, np.ndarray]:
        client = _Client(1)
        client(_message(MessageType.TRAIN, 2, 1, cfg, seed=0))
        message = _message(MessageType.TRAIN, 2, 2, cfg, seed=1)
        reply = client(_spoiled(message, personal) if spoil else message)
        return {k: a.numpy() for k, a in [*reply.content["arrays"].items(), *client.state[CLIENT_STATE].items()]}

    plain, spoiled = second_round(False), second_round(True)
    assert all(np.array_equal(plain[k], spoiled[k]) for k in plain)


# ------------------------------------------------------------------------- the virtual clock

STAGE_BYTES = (16 * 9 + 16 + 16 + 16) * 4  # depth 1 of test_clock's model: conv 3x3 1 -> 16 and its GroupNorm


def test_the_clock_charges_what_each_method_computes_and_sends_by_hand():
    shared = 3 * (STAGE + HEAD) * 10 * 2  # 3 x forward x 10 samples x 2 epochs (test_clock._times)
    plain = _times("none")
    assert plain.upload_s == pytest.approx((STAGE_BYTES + HEAD_BYTES) * 8 / 0.5e6)
    for mode, work, sent in [
        ("fedper", shared, STAGE_BYTES),
        ("lg-fedavg", shared, HEAD_BYTES),
        ("fedbabu", shared, STAGE_BYTES),
        ("fedrep", shared + STAGE * 10 + 3 * HEAD * 10 * 10, STAGE_BYTES),  # + one backbone pass, 10 head epochs
        ("ditto", 2 * shared, STAGE_BYTES + HEAD_BYTES),  # + the personal submodel, as many epochs
        ("apfl", 2 * shared, STAGE_BYTES + HEAD_BYTES),
    ]:
        t = _times(mode)
        assert t.compute_s == pytest.approx(work / 1e9), mode
        assert t.upload_s == pytest.approx(sent * 8 / 0.5e6), mode
        assert t.download_s == plain.download_s, mode  # every client receives its whole slice


class Greedy(ClientAlgorithm):
    """Sends a tensor it does not hold."""

    def sent(self, keys):
        return [*keys, "stages.9.weight"]


def test_a_sent_hook_naming_what_the_client_does_not_hold_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"^personalisation.mode: test_pfl:Greedy.sent returned \['stages.0.0.weight', "
                                        r".*'stages.9.weight'\]; it must return a collection of the names it was "
                                        r"given$"):
        _times("test_pfl:Greedy")


# ------------------------------------------------------------------------- options

@pytest.mark.parametrize(("mode", "options", "needle"), [
    ("fedrep", {"head_epochs": 0}, "personalisation.options.head_epochs: must be an integer >= 1, got 0"),
    ("fedbabu", {"finetune": "body"}, "personalisation.options.finetune: must be one of full, head, got 'body'"),
    ("fedbabu", {"finetune_epochs": 2.5}, "personalisation.options.finetune_epochs: must be an integer >= 1, got 2.5"),
    ("ditto", {"lam": -1}, "personalisation.options.lam: must be a number >= 0, got -1"),
    ("apfl", {"alpha": 1.5}, "personalisation.options.alpha: must be a number in [0, 1], got 1.5"),
    ("apfl", {"adaptive": "yes"}, "personalisation.options.adaptive: must be true or false, got 'yes'"),
    ("fedper", {"head_epochs": 3}, "personalisation.options.head_epochs: unknown option for fedper; it takes none"),
])
def test_bad_options_name_their_key(mode, options, needle):
    with pytest.raises(UserError) as info:
        build_algorithm(config_from_dict({"personalisation": {"mode": mode, "options": options}}))
    assert str(info.value) == needle


@pytest.mark.parametrize("mode", METHODS)
def test_no_method_runs_under_ic_only(mode):
    cfg = config_from_dict({"training": {"scheme": "ic-only", "backbone_rounds": 1},
                            "personalisation": {"mode": mode}})
    with pytest.raises(UserError, match=rf"^training.scheme: {mode} trains the backbone in every round; use "
                                        r"training.scheme = e2e with it$"):
        build_algorithm(cfg)


# ------------------------------------------------------------------------- whole runs

TINY = ["rounds=2", "eval_every=2", "data.num_clients=4", "model.width=8", "training.batch_size=64",
        *[f"tiers.{i}.{k}={v}" for i in range(3) for k, v in (("availability", 1.0), ("failure_rate", 0.0))]]
SHARED = {"fedper": "stages.", "fedrep": "stages.", "fedbabu": "stages.", "lg-fedavg": "exits.", "ditto": "",
          "apfl": ""}  # what the global model learns; the rest keeps its initial values


@pytest.mark.e2e
@pytest.mark.parametrize("mode", METHODS)
def test_each_method_runs_through_the_client_app_to_finite_metrics(tmp_path, mode):
    out, overrides = tmp_path / "run", [*TINY, f"personalisation.mode={mode}"]
    _, summary = run_inprocess(out, overrides)
    assert not (out / CLIENT_ERRORS).exists()
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert {c["outcome"] for r in rounds for c in r["clock"]["clients"]} == {"ok"}  # no update was rejected
    personalised = summary["accuracy"]["personalised"]
    assert all(math.isfinite(personalised[k]) and 0 <= personalised[k] <= 1 for k in ("mean", "adaptive_accuracy",
                                                                                      "ensemble"))
    assert personalised["evaluated_clients"] == 4

    cfg = load_config(None, parse_overrides(overrides))
    start = initial_model(cfg, load_dataset(cfg.data)).state_dict()
    final = read_npz(next((out / "checkpoint").glob("round-*")) / "arrays.npz")
    moved = {k for k, v in start.items() if not np.array_equal(final[k], v.numpy())}
    assert moved and all(k.startswith(SHARED[mode]) for k in moved)


@pytest.mark.e2e
def test_a_resumed_apfl_run_ends_byte_for_byte_as_an_uninterrupted_one(tmp_path):
    overrides = [*FAST, "personalisation.mode=apfl", "personalisation.options.adaptive=true", "checkpoint_every=1"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    run_inprocess(reference, overrides, observers=[CopyIn(2, reference, run)])  # run: as if killed in round 2
    assert _poison_stale_exits(run, 1) > 0  # the killed round's client files: read, they would change the results
    resume_inprocess(run, seed=7)
    _same_results(run, reference)
    saved = [read_npz(p) for p in (run / "checkpoint" / "clients").glob("*/round-*.npz")]
    assert saved and all("apfl/alpha" in state and 0 <= state["apfl/alpha"] <= 1 for state in saved)
