"""Training schemes through the real server loop and ClientApp (in-process grid): ic-only freezes the backbone."""

import numpy as np
import pytest
import torch

from fl_ee.core.config import config_from_dict
from fl_ee.core.errors import UserError
from fl_ee.data.datasets import load_dataset
from fl_ee.federation.preflight import preflight
from fl_ee.federation.server import initial_model
from fl_ee.results.observers import Observer
from inprocess import run_inprocess
from strategies.base import to_numpy

TINY = ["rounds=3", "eval_every=3", "data.num_clients=3", "strategy.fraction_train=1.0",
        "strategy.fraction_evaluate=0.34", "personalisation.mode=none", "training.local_epochs=1",
        *(f"tiers.{i}.{key}={value}" for i in range(3) for key, value in (("availability", 1), ("failure_rate", 0)))]


class GlobalModels(Observer):
    """Keeps the global model after every round."""

    def __init__(self) -> None:
        self.after: list[dict[str, np.ndarray]] = []
        self.records: list[dict] = []

    def after_round(self, record) -> None:
        self.records.append(dict(record))

    def after_state(self, state, strategy) -> None:
        self.after.append({k: v.copy() for k, v in to_numpy(state.arrays).items()})


@pytest.mark.e2e  # a small in-process run (no Ray), but seconds of training
def test_ic_only_freezes_the_backbone_after_its_e2e_rounds(tmp_path):
    seen = GlobalModels()
    run_inprocess(tmp_path / "run", [*TINY, "training.scheme=ic-only", "training.backbone_rounds=1"],
                  observers=[seen], checkpoints=False)
    first, *later = seen.after
    stages = [k for k in first if k.startswith("stages.")]
    for model in later:  # rounds 2 and 3: every backbone tensor bit-identical to the end of round 1
        assert all(np.array_equal(model[k], first[k]) for k in stages)
    assert all(any(not np.array_equal(b[k], a[k]) for k in b if k.startswith("exits.")) for a, b in
               zip(seen.after, later))  # ... while the exits go on training
    # the clock charges what moved: in round 1 the whole slice goes up, later only the exits, so clients are faster
    times = [{c["client_id"]: c["time_s"] for c in r["clock"]["clients"]} for r in seen.records]
    assert all(times[1][c] < times[0][c] for c in times[0]) and times[1] == times[2]


def test_ic_only_needs_a_backbone_to_freeze(tmp_path):
    with pytest.raises(UserError) as info:
        config_from_dict({"rounds": 3, "training": {"scheme": "ic-only"}})
    assert info.value.key == "training.backbone_rounds" and "model.weights" in str(info.value)
    with pytest.raises(UserError) as info:
        config_from_dict({"rounds": 3, "training": {"scheme": "ic-only", "backbone_rounds": 3}})
    assert info.value.key == "training.backbone_rounds"
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    weights = {"weights": str(tmp_path / "w.pt")}
    assert config_from_dict({"rounds": 3, "model": weights, "training": {"scheme": "ic-only"}})


def _weights(cfg, path):
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"weights": str(path)})})


def test_weights_start_the_global_model_and_bad_files_are_one_line(tmp_path):
    import torch

    cfg = config_from_dict({"data": {"num_clients": 3}})
    data = load_dataset(cfg.data)
    model = initial_model(cfg, data)
    for p in model.parameters():
        p.data.fill_(0.25)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = initial_model(_weights(cfg, tmp_path / "w.pt"), data)
    assert all(bool((p == 0.25).all()) for p in loaded.parameters())
    (tmp_path / "bad.pt").write_text("not a state dict")
    torch.save({"stages.0.0.weight": torch.zeros(1)}, tmp_path / "other.pt")
    for name in ("bad.pt", "missing.pt", "other.pt"):
        with pytest.raises(UserError) as info:
            preflight(_weights(cfg, tmp_path / name))
        assert info.value.key == "model.weights" and len(str(info.value).splitlines()) == 1


@pytest.mark.e2e  # two small in-process runs
def test_a_resumed_ic_only_self_distill_run_ends_as_an_uninterrupted_one(tmp_path):
    from test_resume import FAST, Killed, KillIn, _same_results

    from inprocess import resume_inprocess

    overrides = [*FAST, "training.scheme=ic-only", "training.backbone_rounds=1", "personalisation.mode=self-distill",
                 "personalisation.labelled_fraction=0.5"]
    run_inprocess(tmp_path / "whole", overrides)
    with pytest.raises(Killed):
        run_inprocess(tmp_path / "killed", overrides, observers=[KillIn(3)])
    resume_inprocess(tmp_path / "killed", seed=7)  # fresh client contexts: personal heads come from their files
    _same_results(tmp_path / "killed", tmp_path / "whole")
