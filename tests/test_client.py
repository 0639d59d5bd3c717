"""The ClientApp's handlers called as the server calls them: message in, reply out, the client's state kept."""

import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MessageType, RecordDict

from fl_ee.core.config import config_from_dict, config_to_json
from fl_ee.core.errors import UserError
from fl_ee.data.datasets import client_data, run_unseen
from fl_ee.learning.algorithm import build_algorithm
from fl_ee.learning.training import local_loss
from fl_ee.models import EarlyExitNet, ModelSpec, slice_state, submodel_flops
from fl_ee.wire.exchange import Exchange
from fl_ee.wire.protocol import (
    CLIENT_STATE,
    EvaluateReply,
    Instructions,
    TrainReply,
    instruction_message,
    instructions_of,
    payload_of,
)
from inprocess import InProcessGrid

CFG = config_from_dict({"data": {"num_clients": 4}, "training": {"batch_size": 32}})


pytestmark = pytest.mark.usefixtures("task_identity")


def _message(kind: str, depth: int, server_round: int, cfg=CFG, seed: int | None = None, **extra) -> Message:
    if seed is not None:
        torch.manual_seed(seed)
    model = EarlyExitNet(ModelSpec(1, 8, 8, 10))
    instructions = Instructions(config_to_json(cfg), server_round=server_round, depth=depth, **extra)
    return instruction_message(ArrayRecord(slice_state(model.state_dict(), depth)), instructions, 1, kind)


class _Client:
    """One client, called as the server calls it: through the exchange, on a one-node in-process grid."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.exchange = Exchange(InProcessGrid(1), CFG.data.num_clients)

    def __call__(self, message: Message) -> Message:
        message.metadata.dst_node_id = self.client_id
        return self.exchange.send([message])[0]

    @property
    def state(self) -> RecordDict:
        """The client's own state, as its last call left it."""
        return self.exchange.state_of(self.client_id)


def test_train_returns_only_the_shared_slice_and_keeps_personal_exits_in_state():
    client = _Client(2)
    reply = client(_message(MessageType.TRAIN, depth=2, server_round=1))
    keys = set(reply.content["arrays"])
    assert set(reply.content.keys()) == {"arrays", "metrics"}  # the state went to the exchange
    assert keys == set(_message(MessageType.TRAIN, 2, 1).content["arrays"])  # stages/exits 0..1, nothing personal
    assert payload_of(reply, TrainReply).num_examples > 0
    personal = client.state[CLIENT_STATE]
    assert set(personal) == {k.replace("exits.", "exits/", 1) for k in keys if k.startswith("exits.")}

    first = {k: a.numpy().copy() for k, a in personal.items()}
    client(_message(MessageType.TRAIN, depth=2, server_round=2))
    second = {k: a.numpy() for k, a in client.state[CLIENT_STATE].items()}
    assert any(not np.array_equal(first[k], second[k]) for k in first)  # kept and trained further


def test_train_reports_the_local_loss_at_the_received_weights_when_asked():
    plain = _Client(1)(_message(MessageType.TRAIN, depth=3, server_round=1))
    assert payload_of(plain, TrainReply).initial_loss is None
    message = _message(MessageType.TRAIN, depth=3, server_round=1, want_initial_loss=True)
    received = EarlyExitNet(ModelSpec(1, 8, 8, 10), depth=3)
    received.load_state_dict(message.content["arrays"].to_torch_state_dict())
    x, y, _, _ = client_data(CFG, 1)
    expected = local_loss(received, x, y, CFG.training)
    metrics = payload_of(_Client(1)(message), TrainReply)
    assert metrics.initial_loss == pytest.approx(expected, rel=1e-6)


def _trained(training: dict, server_round: int) -> dict[str, np.ndarray]:
    cfg = config_from_dict({"data": {"num_clients": 4}, "training": {"batch_size": 32, **training}})
    reply = _Client(0)(_message(MessageType.TRAIN, 3, server_round, cfg, seed=0))
    return {k: a.numpy() for k, a in reply.content["arrays"].items()}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.e2e
def test_distillation_warm_up_and_options_reach_training():
    for distillation in ("last-exit", "mutual"):
        warm = {"distillation": distillation, "kd_warmup_rounds": 3}
        # before the warm-up round the client trains exactly as without distillation, from then on it does not
        assert _same(_trained(warm, 2), _trained({"distillation": "none"}, 2))
        assert not _same(_trained(warm, 3), _trained({"distillation": "none"}, 3))
    assert not _same(_trained({"distillation": "mutual"}, 1), _trained({"distillation": "last-exit"}, 1))
    assert not _same(_trained({"prox_mu": 0.5}, 1), _trained({}, 1))


@pytest.mark.e2e
def test_every_step_trains_at_the_lr_the_instructions_carry():
    def trained(cfg, **extra) -> dict[str, np.ndarray]:
        client = _Client(0)
        reply = client(_message(MessageType.TRAIN, 3, 2, cfg, seed=0, **extra))
        personal = {f"state.{k}": a.numpy() for k, a in client.state[CLIENT_STATE].items()}
        return {**{k: a.numpy() for k, a in reply.content["arrays"].items()}, **personal}

    sent = trained(_cfg(), lr=0.01)  # the config says 0.05
    assert _same(sent, trained(_cfg(training={"lr": 0.01})))  # shared step and personal heads: as if configured
    assert not _same(sent, trained(_cfg()))

    def tuned(cfg, **extra) -> EvaluateReply:
        return payload_of(_Client(1)(_message(MessageType.EVALUATE, 3, 1, cfg, seed=0, **extra)), EvaluateReply)

    finetune = {"mode": "finetune"}
    sent_lr = tuned(_cfg(personalisation=finetune), lr=0.01)
    assert sent_lr == tuned(_cfg(personalisation=finetune, training={"lr": 0.01}))  # the fine-tuning too
    assert sent_lr != tuned(_cfg(personalisation=finetune))

    # personalisation.lr fixes the personal step's and fine-tuning's lr whatever the round's is; the shared step's stays
    own = trained(_cfg(personalisation={"lr": 0.01}), lr=0.03)
    assert _same({k: v for k, v in own.items() if k.startswith("state.")},
                 {k: v for k, v in sent.items() if k.startswith("state.")})
    assert _same({k: v for k, v in own.items() if not k.startswith("state.")},
                 {k: v for k, v in trained(_cfg(), lr=0.03).items() if not k.startswith("state.")})
    assert tuned(_cfg(personalisation={**finetune, "lr": 0.01}), lr=0.03) == sent_lr


def test_evaluate_uses_personal_exits_once_trained():
    client = _Client(1)
    before = payload_of(client(_message(MessageType.EVALUATE, depth=3, server_round=1)), EvaluateReply)
    client(_message(MessageType.TRAIN, depth=3, server_round=1))
    after = payload_of(client(_message(MessageType.EVALUATE, depth=3, server_round=1)), EvaluateReply)
    assert len(after.exit_accuracy) == 3 and len(after.exit_fractions) == 3
    assert sum(after.exit_fractions) == pytest.approx(1.0)
    # the same global weights are evaluated; only the personal heads differ
    assert after.exit_accuracy != before.exit_accuracy


@pytest.mark.e2e
def test_a_paced_client_sleeps_its_simulated_time():
    start = time.perf_counter()
    _Client(0)(_message(MessageType.TRAIN, depth=1, server_round=1, pace_s=0.5))
    assert time.perf_counter() - start >= 0.5


def test_evaluate_reports_the_full_cost_and_every_policys_curves():
    from fl_ee.deployment.deploy import curves_of, grids
    from fl_ee.federation.client import model_spec

    m = payload_of(_Client(0)(_message(MessageType.EVALUATE, depth=3, server_round=1)), EvaluateReply)
    costs = submodel_flops(model_spec(CFG), 3).exit_costs()
    assert m.full_flops == costs[-1] >= m.expected_flops and m.exit_flops == costs
    policy = CFG.exit_policy
    all_grids = grids(policy, CFG.max_depth)
    test, calib = curves_of(m.test_curves, all_grids), curves_of(m.calib_curves, all_grids)
    assert len(m.test_curves) == len(m.calib_curves) == 2 * sum(len(g) for g in all_grids.values())
    assert m.adaptive_accuracy in test[policy.name][0] and m.expected_flops in test[policy.name][1]
    assert test["entropy"][1][-1] == costs[0]  # normalised entropy <= 1: every sample leaves at exit 1
    assert test["patience"][1][0] == costs[0] and calib["patience"][1][-1] == costs[-1]
    assert m.calib_examples == len(client_data(CFG, 0)[1])  # fraction 0: calibrated on the training samples
    assert len(m.ece) == len(m.ece_calibrated) == len(m.temperatures) == 3 and 0 <= m.overthinking <= 1


def _cfg(**sections) -> object:
    return config_from_dict({"data": {"num_clients": 4}, "rounds": 5, **sections})


def test_ic_only_returns_only_exits_once_the_backbone_is_frozen():
    cfg = _cfg(training={"scheme": "ic-only", "backbone_rounds": 2})
    sent = _message(MessageType.TRAIN, 2, 3, cfg, seed=0)
    frozen = _Client(0)(sent)
    assert set(frozen.content["arrays"]) == {k for k in sent.content["arrays"] if k.startswith("exits.")}
    received = {k: a.numpy() for k, a in sent.content["arrays"].items()}
    assert any(not np.array_equal(a.numpy(), received[k]) for k, a in frozen.content["arrays"].items())  # trained
    e2e = _Client(0)(_message(MessageType.TRAIN, 2, 2, cfg, seed=0))  # rounds 1..backbone_rounds: everything
    assert set(e2e.content["arrays"]) == set(sent.content["arrays"])


def test_evaluate_reports_the_ensemble_of_its_exits():
    from fl_ee.learning.training import accuracy, ensemble, exit_logits

    message = _message(MessageType.EVALUATE, depth=3, server_round=1, cfg=_cfg(personalisation={"mode": "none"}))
    model = EarlyExitNet(ModelSpec(1, 8, 8, 10), depth=3)
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    _, _, x, y = client_data(CFG, 2)
    m = payload_of(_Client(2)(message), EvaluateReply)
    assert m.ensemble_accuracy == accuracy(ensemble(exit_logits(model, x)), y)


@pytest.mark.e2e
def test_finetune_evaluates_a_tuned_copy_and_keeps_nothing(tmp_path):
    cfg = _cfg(personalisation={"mode": "finetune", "epochs": 2})
    client = _Client(1)
    client(_message(MessageType.TRAIN, 3, 1, cfg, seed=0, state_dir=str(tmp_path)))
    assert len(client.state) == 0 and not any(tmp_path.iterdir())  # no personal heads in training
    message = _message(MessageType.EVALUATE, 3, 1, cfg, seed=0, state_dir=str(tmp_path))
    received = {k: a.numpy().copy() for k, a in message.content["arrays"].items()}
    replied = client(message)
    tuned = payload_of(replied, EvaluateReply)
    plain = payload_of(_Client(1)(_message(MessageType.EVALUATE, 3, 1, _cfg(personalisation={"mode": "none"}),
                                           seed=0)), EvaluateReply)
    assert tuned.exit_accuracy != plain.exit_accuracy  # evaluated after fine-tuning ...
    assert len(client.state) == 0 and not any(tmp_path.iterdir()) and "arrays" not in replied.content  # kept, sent
    assert _same(received, {k: a.numpy() for k, a in message.content["arrays"].items()})  # nothing; model untouched
    assert payload_of(client(message), EvaluateReply) == tuned  # so the next evaluation starts afresh


@pytest.mark.e2e
def test_finetune_of_the_head_tunes_a_copy_of_the_exits_over_the_received_backbone():
    def evaluated(personalisation: dict) -> EvaluateReply:
        message = _message(MessageType.EVALUATE, 3, 1, _cfg(personalisation=personalisation), seed=0)
        return payload_of(_Client(1)(message), EvaluateReply)

    head = evaluated({"mode": "finetune", "epochs": 2, "options": {"finetune": "head"}})
    assert head != evaluated({"mode": "none"}) and head != evaluated({"mode": "finetune", "epochs": 2})
    # the same as FedBABU's head fine-tuning of the same received model (its training differs, its evaluation not)
    assert head == evaluated({"mode": "fedbabu", "options": {"finetune": "head", "finetune_epochs": 2}})
    with pytest.raises(UserError, match=r"^personalisation.options.finetune: must be one of full, head, got 'body'"):
        build_algorithm(_cfg(personalisation={"mode": "finetune", "options": {"finetune": "body"}}))


def test_self_distill_keeps_personal_heads_like_exits():
    client = _Client(2)
    cfg = _cfg(personalisation={"mode": "self-distill", "labelled_fraction": 0.5})
    client(_message(MessageType.TRAIN, 2, 1, cfg, seed=0))
    assert set(client.state[CLIENT_STATE]) == {k.replace("exits.", "exits/", 1) for k in
                                               _message(MessageType.TRAIN, 2, 1, cfg).content["arrays"]
                                               if k.startswith("exits.")}


@pytest.mark.e2e
def test_an_unseen_client_evaluates_as_a_client_that_trained_once_from_nothing_in_that_round():
    held_out = _cfg(data={"num_clients": 4, "unseen_fraction": 0.25})
    (unseen,) = run_unseen(held_out)
    cfg = _cfg()  # the same run without unseen clients: the same data, tiers and seed streams
    participant = _Client(unseen)
    participant(_message(MessageType.TRAIN, 3, 2, cfg, seed=0))  # its personal exits, trained once, kept
    trained = payload_of(participant(_message(MessageType.EVALUATE, 3, 2, cfg, seed=0)), EvaluateReply)
    untrained = payload_of(_Client(unseen)(_message(MessageType.EVALUATE, 3, 2, cfg, seed=0)), EvaluateReply)
    newcomer = _Client(unseen)
    reply = payload_of(newcomer(_message(MessageType.EVALUATE, 3, 2, held_out, seed=0)), EvaluateReply)
    assert reply == trained  # exits: personal heads trained on its train split first, as in a first round
    assert reply.test_curves != untrained.test_curves  # not the received exits
    assert not newcomer.state  # and nothing kept
    finetune = {"personalisation": {"mode": "finetune"}}  # keeps nothing: the fine-tuning is all it does
    tuned = payload_of(_Client(unseen)(_message(MessageType.EVALUATE, 3, 2, _cfg(**finetune), seed=0)), EvaluateReply)
    assert payload_of(_Client(unseen)(_message(MessageType.EVALUATE, 3, 2, _cfg(data=held_out.data.model_dump(),
                                                                             **finetune), seed=0)),
                      EvaluateReply) == tuned


def test_a_call_gives_the_same_update_whatever_an_earlier_call_left_in_the_processs_submodel():
    from fl_ee.federation.client import _built

    fresh = _trained({}, 1)
    message = _message(MessageType.TRAIN, 3, 1, seed=0)
    left, _ = _built(instructions_of(message).run_config, 3, 1.0, torch.device("cpu"))  # the next depth-3 call uses it
    with torch.no_grad():
        for parameter in left.parameters():  # as a call that failed half way might leave it
            parameter.add_(1.0)
            parameter.grad = torch.ones_like(parameter)
            parameter.requires_grad_(False)
    left.eval()
    assert _same(_trained({}, 1), fresh)

