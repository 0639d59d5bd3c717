import math
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel

from fl_ee.cli import main
from fl_ee.core.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_from_saved,
    config_to_dict,
    config_to_json,
    config_to_toml,
    load_config,
    parse_overrides,
    preset_path,
)
from fl_ee.core.errors import UserError
from fl_ee.learning.training import for_round


def error_key(raw: dict) -> str | None:
    with pytest.raises(UserError) as info:
        config_from_dict(raw)
    return info.value.key


def test_defaults_are_valid():
    assert config_from_dict({}) == Config()


def test_presets_load_and_round_trip_through_toml(tmp_path):
    for name in ("quickstart", "fmnist-3tiers"):
        cfg = load_config(name)
        path = tmp_path / f"{name}.toml"
        path.write_text(config_to_toml(cfg))
        assert load_config(str(path)) == cfg


def test_quickstart_is_the_default_and_holds_three_tiers():
    cfg = load_config(None)
    assert cfg == load_config(str(preset_path("quickstart")))
    assert [t.depth for t in cfg.tiers] == [2, 3, 4]
    assert cfg.data.name == "digits"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"data": {"nme": "digits"}}, "data.nme"),
        ({"bogus": 1}, "bogus"),
        ({"rounds": "3"}, "rounds"),
        ({"rounds": 2.5}, "rounds"),
        ({"data": {"download": 1}}, "data.download"),
        ({"data": {"name": "imagenet"}}, "data.name"),
        ({"data": {"alpha": 0}}, "data.alpha"),
        ({"data": {"test_fraction": 1.0}}, "data.test_fraction"),
        ({"training": {"distillation": "all"}}, "training.distillation"),
        ({"training": {"prox_mu": -0.1}}, "training.prox_mu"),
        ({"training": {"kd_warmup_rounds": -1}}, "training.kd_warmup_rounds"),
        ({"training": {"kd_warmup_rounds": 1.5}}, "training.kd_warmup_rounds"),
        ({"training": {"weight_decay": -0.1}}, "training.weight_decay"),
        ({"training": {"clip_norm": -1.0}}, "training.clip_norm"),
        ({"training": {"lr_schedule": "warmup"}}, "training.lr_schedule"),
        ({"training": {"lr_decay": 0}}, "training.lr_decay"),
        ({"training": {"lr_gamma": 1.5}}, "training.lr_gamma"),
        ({"training": {"lr_milestones": [200, 100]}}, "training.lr_milestones"),
        ({"training": {"lr_schedule": "step"}}, "training.lr_milestones"),
        ({"training": {"lr_schedule": "cosine", "lr": 0.01, "lr_min": 0.05}}, "training.lr_min"),
        ({"tiers": [{"name": "a", "share": 0.5, "depth": 2}]}, "tiers"),
        ({"tiers": [{"name": "a", "share": 1.0, "depth": 5}]}, "tiers.0.depth"),
        ({"tiers": [{"name": "a", "share": 0.5, "depth": 1}, {"name": "b", "share": 0.5, "depth": 0}]},
         "tiers.1.depth"),
        ({"tiers": [{"name": "a", "share": 1.0}]}, "tiers.0.depth"),
        ({"tiers": []}, "tiers"),
        ({"strategy": {"fraction_train": 0}}, "strategy.fraction_train"),
        ({"data": "digits"}, "data"),
        ({"tiers": [{"name": "a", "share": 1.0, "depth": 2, "compute_gflops": -1.0}]}, "tiers.0.compute_gflops"),
        ({"tiers": [{"name": "a", "share": 1.0, "depth": 2, "upload_mbps": 0}]}, "tiers.0.upload_mbps"),
        ({"tiers": [{"name": "a", "share": 1.0, "depth": 2, "availability": 1.5}]}, "tiers.0.availability"),
        ({"tiers": [{"name": "a", "share": 1.0, "depth": 2, "failure_rate": -0.1}]}, "tiers.0.failure_rate"),
        ({"tiers": [{"name": "a", "share": 1.0, "depth": 2, "preset": "toaster"}]}, "tiers.0.preset"),
        ({"simulation": {"straggler_policy": "deadline"}}, "simulation.deadline_s"),
        ({"simulation": {"straggler_policy": "fastest"}}, "simulation.straggler_policy"),
        ({"simulation": {"overcommit": -0.5}}, "simulation.overcommit"),
        ({"simulation": {"time_scale": 0}}, "simulation.time_scale"),
        ({"simulation": {"target_accuracy": 80}}, "simulation.target_accuracy"),
    ],
)
def test_bad_values_name_their_dotted_key(raw, key):
    assert error_key(raw) == key


def test_a_tier_takes_its_device_preset_and_overrides_any_field():
    from sims.devices import DEVICES

    tier = config_from_dict({"tiers": [{"name": "p", "share": 1.0, "depth": 3, "preset": "budget-phone",
                                        "availability": 1.0}]}).tiers[0]
    phone = DEVICES["budget-phone"]
    assert (tier.compute_gflops, tier.download_mbps, tier.upload_mbps) == (
        phone.compute_gflops, phone.download_mbps, phone.upload_mbps)
    assert tier.availability == 1.0 and tier.failure_rate == phone.failure_rate


def test_training_options_reach_each_round():
    cfg = config_from_dict({"training": {"distillation": "mutual", "kd_weight": 1, "kd_warmup_rounds": 2}})
    early, late = for_round(cfg.training, 1), for_round(cfg.training, 2)
    assert (early.kd_weight, early.distillation) == (0.0, "mutual")  # no distillation during the warm-up
    assert late == cfg.training and type(late.kd_weight) is float
    assert cfg.training.kd_weight == 1.0  # the run's config is not changed


def test_int_is_accepted_where_float_is_expected_but_not_bool_or_str():
    cfg = config_from_dict({"training": {"lr": 1}, "data": {"alpha": 2}})
    assert type(cfg.training.lr) is float and cfg.training.lr == 1.0
    assert '"alpha": 2.0' in config_to_json(cfg)  # clients see the same JSON as for alpha = 2.0
    for bad in (True, "1"):
        assert error_key({"training": {"lr": bad}}) == "training.lr"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"tiers": [{"name": "a", "share": 0.5, "depth": 1}, {"name": "b", "share": 0.5, "depth": 7}]},
         "tiers.1.depth: must be in 1..4"),
        ({"data": {"alpha": 0}}, "data.alpha: must be > 0"),
        ({"data": {"test_fraction": 1}}, "data.test_fraction: must be in (0, 1)"),
        ({"data": {"unseen_fraction": 1}}, "data.unseen_fraction: must be in [0, 1)"),
        ({"data": {"unseen_fraction": -0.1}}, "data.unseen_fraction: must be in [0, 1)"),
        ({"data": {"num_clients": 1, "unseen_fraction": 0.1}},
         "data.unseen_fraction: leaves no client to train: 1 of 1 clients would be unseen"),
        ({"data": {"num_clients": 20, "unseen_fraction": 0.98}},  # round(19.6) = 20
         "data.unseen_fraction: leaves no client to train: 20 of 20 clients would be unseen"),
        ({"data": {"partitioner": "x"}}, "data.partitioner: unknown value 'x'; choose one of iid, dirichlet, shards"),
        ({"data": {"bogus": 1}}, "data.bogus: unknown key"),
        ({"rounds": "x"}, "rounds: expected int, got 'x'"),
        ({"data": {"download": 1}}, "data.download: expected bool, got 1"),
        ({"data": "digits"}, "data: expected a table, got 'digits'"),
        ({"tiers": []}, "tiers: expected a non-empty array of tables"),
        ({"tiers": [{"name": "", "share": 1.0, "depth": 1}]}, "tiers.0.name: must not be empty"),
        ({"tiers": [{"name": "a", "share": 1.0}]}, "tiers.0.depth: missing"),
        ({"tiers": [{"name": "a", "share": 0.5, "depth": 1}] * 2}, "tiers: tier names must be unique, got ['a', 'a']"),
        ({"tiers": [{"name": "a", "share": 1.0, "depth": 1, "preset": "toaster"}]},
         "tiers.0.preset: unknown device 'toaster'; choose one of iot-board, budget-phone"),
        ({"strategy": {"fraction_train": 0}}, "strategy.fraction_train: must be in (0, 1]"),
        ({"training": {"weight_decay": -0.1}}, "training.weight_decay: must be >= 0"),
        ({"training": {"lr_schedule": "warmup"}},
         "training.lr_schedule: unknown value 'warmup'; choose one of constant, exp, step, cosine"),
        ({"training": {"lr_decay": 1.01}}, "training.lr_decay: must be in (0, 1]"),
        ({"training": {"lr_milestones": [100, 100]}},
         "training.lr_milestones: rounds must be increasing and >= 1, got [100, 100]"),
        ({"training": {"lr_milestones": [0, 5]}}, "training.lr_milestones: rounds must be increasing and >= 1"),
        ({"training": {"lr_schedule": "step"}}, "training.lr_milestones: must name at least one round"),
        ({"training": {"lr_schedule": "cosine", "lr": 0.01, "lr_min": 0.05}},
         "training.lr_min: must be at most training.lr (0.01) with lr_schedule = cosine"),
    ],
)
def test_errors_are_one_line_naming_the_key_and_the_rule(raw, message):
    with pytest.raises(UserError) as info:
        config_from_dict(raw)
    assert str(info.value).startswith(message)


def schema_leaves(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, Any]:
    """Every leaf field by dotted key; a tier's fields as ``tiers.<field>``."""
    leaves = {}
    for name, info in model.model_fields.items():
        kind = get_args(info.annotation)[0] if get_origin(info.annotation) is tuple else info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            leaves.update(schema_leaves(kind, f"{prefix}{name}."))
        else:
            leaves[f"{prefix}{name}"] = info
    return leaves


def test_no_float_anywhere_takes_nan_or_infinity():
    floats = {key: info.annotation for key, info in schema_leaves().items() if info.annotation in (float, list[float])}
    assert len(floats) == 42  # every float field, lists of floats included
    for key, kind in floats.items():
        dotted = key.replace("tiers.", "tiers.0.")
        for bad in (math.inf, -math.inf, math.nan):
            value, where = ([1.0, bad, 1.0, 1.0], f"{dotted}.1") if kind == list[float] else (bad, dotted)
            with pytest.raises(UserError) as info:
                load_config(None, {dotted: value})
            assert str(info.value) == f"{where}: must be a finite number, got {bad!r}"


def test_rounds_have_a_documented_upper_bound():
    assert load_config(None, {"rounds": 100_000}).rounds == 100_000
    with pytest.raises(UserError, match=r"^rounds: must be in 1\.\.100000$"):
        load_config(None, {"rounds": 100_001})


def test_a_saved_config_is_read_even_when_no_longer_valid():
    raw = config_to_dict(load_config("quickstart"))
    assert config_from_saved(raw) == load_config("quickstart")
    raw["tiers"][0]["depth"] = 7  # rules got stricter since the run was written ...
    raw["data"]["retired"] = True  # ... a key was dropped ...
    del raw["training"]["lr"]  # ... and one added
    cfg = config_from_saved(raw)
    assert cfg.tiers[0].depth == 7 and cfg.max_depth == 7 and isinstance(cfg.tiers, tuple)
    assert cfg.training.lr == 0.05 and "retired" not in config_to_dict(cfg)["data"]
    assert cfg.data.name == "digits" and cfg.tiers[1] == load_config("quickstart").tiers[1]
    assert config_from_saved({"data": "digits", "bogus": 1}) == Config()


def test_overrides_parse_toml_literals_and_bare_strings():
    assert parse_overrides(["rounds=3", "data.alpha=0.1", "data.download=true", "data.name=mnist", "x.y='a=b'"]) == {
        "rounds": 3,
        "data.alpha": 0.1,
        "data.download": True,
        "data.name": "mnist",
        "x.y": "a=b",
    }
    with pytest.raises(UserError):
        parse_overrides(["rounds"])


def test_overrides_reach_into_tier_lists_and_create_sections():
    raw = {"tiers": [{"name": "a", "share": 1.0, "depth": 4}]}
    out = apply_overrides(raw, {"tiers.0.depth": 2, "strategy.options.weighted": False})
    assert out["tiers"][0]["depth"] == 2 and out["strategy"]["options"] == {"weighted": False}
    assert raw["tiers"][0]["depth"] == 4  # the input is not modified
    with pytest.raises(UserError) as info:
        apply_overrides(raw, {"tiers.3.depth": 2})
    assert info.value.key == "tiers.3"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--set", "data.nme=x"], "data.nme: unknown key"),
        (["run", "--set", "tiers.0.share=0.9"], "tiers: shares must sum to 1"),
        (["run", "--set", "tiers.1.depth=7"], "tiers.1.depth: must be in 1..4"),
        (["run", "--set", "data.name=imagenet"], "data.name: unknown value 'imagenet'"),
        (["run", "--set", "rounds=many"], "rounds: expected int"),
        (["run", "/nonexistent/config.toml"], "config file not found"),
        (["run", "--set", "strategy.name=nope"], "strategy.name: unknown strategy 'nope'"),
        (["run", "--set", "strategy.name=nomodule_xyz:Cls"], "strategy.name: cannot import"),
        (["run", "--set", "strategy.name=fl_ee.core.config:Config"], "is not a strategies.DepthAwareStrategy subclass"),
        (["run", "--set", "strategy.options.bogus=1"], "strategy.options.bogus: unknown option"),
        (["run", "--set", "simulation.straggler_policy=deadline"], "simulation.deadline_s: must be set"),
        (["run", "--set", "tiers.0.download_mbps=-3"], "tiers.0.download_mbps: must be > 0"),
        (["run", "--set", "personalisation.labelled_fraction=1.5"], "personalisation.labelled_fraction: must be in [0"),
        (["run", "--set", "training.scheme=ic-only"], "training.backbone_rounds: ic-only needs a backbone to freeze"),
        (["run", "--set", "training.exit_weights=[1, 2]"], "training.exit_weights: needs one weight per exit"),
        (["run", "--set", "personalisation.labelled_fraction=0.5"], "only with personalisation.mode = self-distill"),
        (["run", "--set", "simulation.overcommit=inf"], "simulation.overcommit: must be a finite number, got inf"),
        (["run", "--set", "simulation.pace=true", "--set", "simulation.time_scale=inf"],
         "simulation.time_scale: must be a finite number, got inf"),
        (["run", "--set", "rounds=99999999999999999999"], "rounds: must be in 1..100000"),
        (["run", "--set", "data.unseen_fraction=0.99"], "data.unseen_fraction: leaves no client to train"),
        (["run", "--set", "strategy.name=feddyn", "--set", "strategy.options.alpha=inf"],
         "strategy.options.alpha: must be a number > 0, got inf"),
        (["run", "--set", "training.lr_schedule=step", "--set", "training.lr_milestones=[10, 5]"],
         "training.lr_milestones: rounds must be increasing"),
    ],
)
def test_cli_reports_bad_input_in_one_line_with_exit_2(argv, needle, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("fl-ee: error: ")
    assert not (tmp_path / "run").exists()  # nothing is started for bad input


def test_cli_reports_missing_dataset(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no copy in ./data or ../shared/data to point at
    argv = ["run", "--set", "data.name=mnist", "--set", f"data.root={tmp_path}", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fl-ee: error: data.root: mnist not found") and "data.download=true" in err
