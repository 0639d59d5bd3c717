"""Property: whatever config and ``--set`` overrides it gets, ``fl-ee check`` exits 0, or 2 with one line.

Hypothesis writes random TOML configs (sections with right and wrong keys, types and
ranges; tier lists) and random ``--set`` overrides (dotted keys into sections, tier
indices and unknown places; numbers, booleans, strings, arrays, inline tables), then runs
``fl-ee check`` in process. Never a traceback; a warning is one ``fl-ee: warning:`` line.
"""

import io
import traceback
from contextlib import redirect_stderr, redirect_stdout

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_ee.cli import main
from inprocess import sets

fractions = st.floats(0.05, 1.0)
VALID = {  # per key, values the schema accepts (a run may still fail its preflight, e.g. a split)
    # few distinct splits, so most valid examples find theirs in the split cache
    "": {"seed": st.sampled_from([0, 1, 2**40]), "rounds": st.integers(1, 3), "eval_every": st.integers(1, 3)},
    "data": {"name": st.just("digits"), "num_clients": st.integers(1, 8),
             "partitioner": st.sampled_from(["iid", "dirichlet", "shards"]), "alpha": st.sampled_from([0.05, 0.5, 5]),
             "shards_per_client": st.integers(1, 4), "test_fraction": st.sampled_from([0.05, 0.5]),
             "download": st.just(False)},
    "model": {"backbone": st.just("cnn"), "exit_head": st.sampled_from(["linear", "mlp"]),
              "width": st.sampled_from([1, 4, 16])},
    "training": {"local_epochs": st.integers(1, 3), "batch_size": st.integers(1, 64), "lr": st.floats(0.001, 1),
                 "momentum": st.floats(0, 0.9), "distillation": st.sampled_from(["last-exit", "mutual", "none"]),
                 "kd_weight": st.floats(0, 2), "prox_mu": st.floats(0, 1)},
    "personalisation": {"mode": st.sampled_from(["exits", "none"]), "epochs": st.integers(1, 3)},
    "strategy": {"name": st.sampled_from(["depthfl", "exclusive", "feddyn", "fedadam", "fedyogi", "qfedavg"]),
                 "fraction_train": fractions, "fraction_evaluate": st.one_of(st.just(0.0), fractions)},
    "exit_policy": {"name": st.sampled_from(["entropy", "max-prob", "calibrated", "patience"]),
                    "threshold": st.floats(0, 1), "patience": st.integers(1, 4),
                    "thresholds": st.sampled_from(["fixed", "budget", "accuracy"]),
                    "scope": st.sampled_from(["personal", "tier", "global"]), "flops_budget": st.floats(0.01, 1),
                    "max_drop": st.floats(0, 1), "calibration_fraction": st.sampled_from([0.0, 0.1, 0.5])},
    "simulation": {"straggler_policy": st.sampled_from(["wait", "deadline", "overselect"]),
                   "deadline_s": st.floats(0, 100), "overcommit": st.floats(0, 1),
                   "target_accuracy": st.floats(0, 1), "time_scale": st.floats(0.1, 2)},
}
TIER_VALID = {"preset": st.sampled_from(["", "iot-board", "laptop", "budget-phone"]),
              "compute_gflops": st.floats(0.5, 50), "availability": st.floats(0, 1),
              "failure_rate": st.floats(0, 1), "speed_sigma": st.floats(0, 1)}
WORDS = ["digits", "mnist", "iid", "dirichlet", "shards", "cnn", "mlp", "linear", "depthfl", "fedadam", "exclusive",
         "wait", "deadline", "overselect", "entropy", "max-prob", "calibrated", "patience", "budget", "exits",
         "none", "laptop", "iot-board", "x", ""]

numbers = st.one_of(st.integers(-3, 12), st.sampled_from([0.0, 0.05, 0.3, 0.5, 1.0, 1.5, -0.5, 1e9, float("inf")]))
scalars = st.one_of(numbers, st.booleans(), st.sampled_from(WORDS), st.text(max_size=6))
anything = st.one_of(scalars, st.lists(scalars, max_size=2),
                     st.dictionaries(st.sampled_from(["a", "name"]), scalars, max_size=2))


def value_for(draw, valid: st.SearchStrategy) -> object:
    """Mostly a valid value, sometimes anything at all."""
    return draw(valid) if draw(st.integers(0, 9)) else draw(anything)


@st.composite
def tiers(draw) -> list[dict]:
    count = draw(st.integers(0, 3))
    shares = [1 / count] * count if count and draw(st.integers(0, 4)) else [draw(numbers) for _ in range(count)]
    made = []
    for i, share in enumerate(shares):
        tier = {"name": f"t{i}" if draw(st.integers(0, 6)) else draw(st.sampled_from(["t0", ""])), "share": share,
                "depth": draw(st.integers(1, 4)) if draw(st.integers(0, 6)) else draw(st.integers(-1, 6))}
        for key in draw(st.lists(st.sampled_from([*TIER_VALID, "bogus"]), max_size=2)):
            tier[key] = value_for(draw, TIER_VALID.get(key, anything))
        made.append(tier)
    return made


@st.composite
def configs(draw) -> dict:
    raw: dict = {}
    for section in draw(st.lists(st.sampled_from(list(VALID)), max_size=4, unique=True)):
        known = VALID[section]
        keys = draw(st.lists(st.sampled_from([*known, *(["bogus"] if draw(st.integers(0, 5)) == 0 else [])]),
                             max_size=3, unique=True))
        table = raw if section == "" else raw.setdefault(section, {})
        for key in keys:
            table[key] = value_for(draw, known.get(key, anything))
    if draw(st.booleans()):
        raw["tiers"] = draw(tiers())
    raw.setdefault("data", {}).setdefault("num_clients", draw(st.integers(1, 8)))  # valid runs stay small
    return raw


def literal(value: object) -> str:
    """A value as ``--set`` takes it (a TOML literal)."""
    return tomli_w.dumps({"v": value}).strip().removeprefix("v = ")


@st.composite
def overrides(draw) -> list[str]:
    found = []
    for _ in range(draw(st.integers(0, 2))):
        section = draw(st.sampled_from([*VALID, "tiers.0", "tiers.7", "tiers.x", "nope", "seed"]))
        known = TIER_VALID if section.startswith("tiers") else VALID.get(section, {"a": anything})
        name = draw(st.sampled_from([*known, "bogus"]))
        key = f"{section}.{name}" if section else name
        if draw(st.integers(0, 3)):
            value = literal(value_for(draw, known.get(name, anything)))
        else:
            value = draw(st.one_of(st.sampled_from(["", "1e999", "nan", "=", "2=3", "'unclosed", "[1, {a = 2}]"]),
                                   st.text(max_size=5)))
        found.append(f"{key}={value}" if draw(st.integers(0, 9)) else draw(st.text(max_size=6)))
    return found


@pytest.mark.e2e
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(raw=configs(), extra=overrides())
def test_check_answers_every_config_with_exit_0_or_one_error_line(raw, extra, tmp_path):
    path = tmp_path / "fuzz.toml"
    text = tomli_w.dumps({"rounds": 2, **raw}) if "rounds" not in raw else tomli_w.dumps(raw)
    path.write_text(text)
    argv = ["check", str(path), *sets(extra)]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's own errors (e.g. a --set value that looks like an option)
            code = exit.code
        except BaseException:
            raise AssertionError(f"{argv}\n{text}\n{traceback.format_exc()}") from None
    lines = err.getvalue().splitlines()
    assert "Traceback" not in err.getvalue() + out.getvalue(), (argv, text, err.getvalue())
    if code == 0:
        assert all(line.startswith("fl-ee: warning: ") for line in lines), (argv, text, lines)
        assert "Plan per tier" in out.getvalue()
    else:
        assert code == 2, (argv, text, code, lines)
        assert len(lines) == 1 and lines[0].startswith("fl-ee: error: "), (argv, text, lines)
