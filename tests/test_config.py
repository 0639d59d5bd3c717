import pytest

from fl_ee.cli import main
from fl_ee.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_toml,
    load_config,
    parse_overrides,
    preset_path,
)
from fl_ee.errors import UserError


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


def test_training_options_for_the_baselines():
    t = config_from_dict({"training": {"distillation": "mutual", "prox_mu": 0.01, "kd_warmup_rounds": 5}}).training
    assert (t.distillation, t.prox_mu, t.kd_warmup_rounds) == ("mutual", 0.01, 5)
    assert (Config().training.prox_mu, Config().training.kd_warmup_rounds) == (0.0, 0)


def test_int_is_accepted_where_float_is_expected():
    assert config_from_dict({"training": {"lr": 1}}).training.lr == 1.0


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
        (["run", "--set", "strategy.name=fl_ee.config:Config"], "is not a strategies.DepthAwareStrategy subclass"),
        (["run", "--set", "strategy.options.bogus=1"], "strategy.options.bogus: unknown option"),
        (["run", "--set", "simulation.straggler_policy=deadline"], "simulation.deadline_s: must be set"),
        (["run", "--set", "tiers.0.download_mbps=-3"], "tiers.0.download_mbps: must be > 0"),
    ],
)
def test_cli_reports_bad_input_in_one_line_with_exit_2(argv, needle, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("fl-ee: error: ")
    assert not (tmp_path / "run").exists()  # nothing is started for bad input


def test_cli_reports_missing_dataset(capsys, tmp_path):
    argv = ["run", "--set", "data.name=mnist", "--set", f"data.root={tmp_path}", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fl-ee: error: data.root: mnist not found") and "data.download=true" in err
