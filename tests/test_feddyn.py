"""FedDyn's client side (fl_ee/learning/feddyn.py): the term by hand, g_prev kept, learning with the server."""

import numpy as np
import pytest
import torch
from flwr.app import MessageType
from test_client import _Client, _message

from fl_ee.core.atomic import read_npz
from fl_ee.core.config import TrainingConfig, config_from_dict
from fl_ee.learning.feddyn import FedDynTerm
from fl_ee.learning.training import fit
from fl_ee.models import EarlyExitNet, ModelSpec
from fl_ee.wire.protocol import CLIENT_STATE, TrainReply, payload_of
from inprocess import run_inprocess
from strategies.feddyn import client_alpha

pytestmark = pytest.mark.usefixtures("task_identity")


def test_the_client_term_and_g_prev_by_hand_over_two_sgd_steps():
    # one weight w, received at 1.0, data loss w^2 (gradient 2w), g_prev 0.5, alpha 0.1, SGD lr 0.1:
    #   loss = w^2 - g w + alpha/2 (w - 1)^2, gradient 2w - g + alpha (w - 1)
    #   step 1 at w = 1:    loss 1 - 0.5 + 0 = 0.5,                 gradient 1.5,   w <- 0.85
    #   step 2 at w = 0.85: loss 0.7225 - 0.425 + 0.05 * 0.0225 = 0.298625, gradient 1.185, w <- 0.7315
    #   g_prev <- 0.5 - 0.1 (0.7315 - 1) = 0.52685
    module = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        module.weight.fill_(1.0)
    term = FedDynTerm(0.1, module, {"feddyn/weight": torch.tensor([[0.5]])})
    penalty = term.penalty(module)
    x = torch.ones(1, 1)
    cfg = TrainingConfig(lr=0.1, momentum=0.0, batch_size=1)
    mean = fit(module.parameters(), cfg, 2, 1, torch.Generator(), lambda idx: module(x[idx]).pow(2).sum() + penalty())
    assert mean == pytest.approx((0.5 + 0.298625) / 2, rel=1e-6)
    assert module.weight.item() == pytest.approx(0.7315, rel=1e-6)
    assert term.state(module)["feddyn/weight"].item() == pytest.approx(0.52685, rel=1e-6)
    assert FedDynTerm(0.1, module, {}).g_prev["weight"].item() == 0.0  # a client's first round starts from zeros


def test_alpha_reaches_the_clients_from_the_strategys_options():
    assert client_alpha(config_from_dict({"strategy": {"name": "feddyn", "options": {"alpha": 0.3}}})) == 0.3
    assert client_alpha(config_from_dict({"strategy": {"name": "feddyn"}})) == 0.1  # FedDyn's default
    assert client_alpha(config_from_dict({"strategy": {"name": "depthfl"}})) == 0.0


def _cfg(**training):
    return config_from_dict({"data": {"num_clients": 4}, "rounds": 3, "training": {"batch_size": 64, **training},
                             "strategy": {"name": "feddyn", "options": {"alpha": 0.5}}})


def _arrays(record) -> dict[str, np.ndarray]:
    return {k: a.numpy().copy() for k, a in record.items()}


def test_a_feddyn_client_keeps_g_prev_per_parameter_and_sends_only_its_slice():
    cfg, client = _cfg(), _Client(1)
    g = {}
    for rnd in (1, 2):
        sent = _message(MessageType.TRAIN, 2, rnd, cfg, seed=rnd)
        received = _arrays(sent.content["arrays"])
        reply = client(sent)
        assert set(reply.content.keys()) == {"arrays", "metrics"} and set(reply.content["arrays"]) == set(received)
        trained = _arrays(reply.content["arrays"])
        state = _arrays(client.state[CLIENT_STATE])
        params = {name for name, _ in EarlyExitNet(ModelSpec(1, 8, 8, 10), depth=2).named_parameters()}
        assert {k for k in state if k.startswith("feddyn/")} == {f"feddyn/{name}" for name in params}
        assert any(k.startswith("exits/") for k in state)  # the personal exits (mode exits) beside it
        for name in params:  # g_prev <- g_prev - alpha (w - w_received), from zeros
            expected = g.get(name, 0.0) - 0.5 * (trained[name] - received[name])
            np.testing.assert_allclose(state[f"feddyn/{name}"], expected, rtol=1e-5, atol=1e-7)
        g = {name: state[f"feddyn/{name}"] for name in params}
    assert any(np.abs(v).max() > 0 for v in g.values())


def test_the_term_changes_the_shared_step_and_a_frozen_backbone_keeps_its_g_prev():
    depthfl = config_from_dict({"data": {"num_clients": 4}, "training": {"batch_size": 64}})
    plain = payload_of(_Client(0)(_message(MessageType.TRAIN, 2, 1, depthfl, seed=0)), TrainReply)
    dyn = payload_of(_Client(0)(_message(MessageType.TRAIN, 2, 1, _cfg(), seed=0)), TrainReply)
    assert dyn.train_loss != plain.train_loss  # the quadratic term acts from the second step on

    cfg, client = _cfg(scheme="ic-only", backbone_rounds=1), _Client(0)
    client(_message(MessageType.TRAIN, 2, 1, cfg, seed=0))  # end to end
    first = _arrays(client.state[CLIENT_STATE])
    client(_message(MessageType.TRAIN, 2, 2, cfg, seed=0))  # only the exits train
    second = _arrays(client.state[CLIENT_STATE])
    stages = [k for k in first if k.startswith("feddyn/stages.")]
    exits = [k for k in first if k.startswith("feddyn/exits.")]
    assert stages and all(np.array_equal(first[k], second[k]) for k in stages)
    assert exits and any(not np.array_equal(first[k], second[k]) for k in exits)


@pytest.mark.e2e  # trains the quick start for 5 rounds (~2.5 s)
def test_feddyn_server_and_clients_learn_the_digits_quickstart(tmp_path):
    out = tmp_path / "run"
    no_client_evaluation = "strategy.fraction_evaluate=0"  # what is asserted is the global model's accuracy
    _, summary = run_inprocess(out, ["rounds=5", "eval_every=5", "strategy.name=feddyn", "personalisation.mode=none",
                                     no_client_evaluation])
    by_exit = summary["accuracy"]["global"]["by_exit"]
    assert min(by_exit.values()) > 0.3 and max(by_exit.values()) > 0.6  # 10 classes: chance is 0.1
    saved = [read_npz(p) for p in (out / "checkpoint" / "clients").glob("*/round-*.npz")]
    assert saved and all(keys and all(k.startswith("feddyn/") for k in keys) for keys in saved)


def test_fedprox_on_top_of_feddyn_is_warned_about():
    from fl_ee.federation.preflight import config_warnings

    warning = "training.prox_mu adds a second quadratic term to FedDyn's own (alpha); set it to 0 for FedDyn"
    assert warning in config_warnings(config_from_dict({"strategy": {"name": "feddyn"}, "training": {"prox_mu": 0.1}}))
    assert warning not in config_warnings(config_from_dict({"strategy": {"name": "feddyn"}}))
    assert warning not in config_warnings(config_from_dict({"training": {"prox_mu": 0.1}}))
