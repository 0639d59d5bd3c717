"""``fl-ee check`` again: the recorded plan of the same inputs, answered without torch, Flower or Ray.

The check of a config (:func:`~fl_ee.federation.preflight.preflight`, then
:func:`~fl_ee.federation.plan.make_plan`) is a deterministic function of the config, the
dataset's source files, the files the config names (weights, traces), fl-ee's code and the
installed libraries. :func:`checked_plan` records its outcome (the plan's figures and the
config's warnings) under ``$FL_EE_CACHE/checks/``, keyed by all of those (file names,
sizes and modification times; the environment's site-packages folder by its own, so
installing, removing or upgrading a package is seen), and answers from the record while they stay the same: a
second check of a preset takes a fraction of a second instead of seconds of imports and
FLOP counting. A check that fails records nothing; one whose data is missing says so
before torch is imported. A config naming a plug-in by its ``module:Class`` path is
checked afresh every time (its code is not part of the key).
"""

from __future__ import annotations

import dataclasses
import sysconfig
import types
import typing
from pathlib import Path
from typing import Any

from fl_ee.core.cache import cached
from fl_ee.core.config import Config, config_to_json, resolve_paths
from fl_ee.core.errors import UserError, warn
from fl_ee.data.sources import dataset_root, require_sources, source_key
from fl_ee.federation.plan import Plan, TierPlan

RECORD = "checks"  # the cache folder of the records
PACKAGES = ("fl_ee", "sims", "strategies", "partitions")  # fl-ee's code, keyed by its files
ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Checked:
    """What a check found: the plan and the config's warnings (printed before it)."""

    plan: Plan
    warnings: list[str]


def checked_plan(cfg: Config) -> Plan:
    """The plan of ``cfg`` after its preflight, the config's warnings printed first; recorded, or made and recorded."""
    cfg = resolve_paths(cfg)
    key = check_key(cfg)
    found = _check(cfg) if key is None else cached(RECORD, key, lambda: _check(cfg), _dump, lambda b: _parse(cfg, b))
    for line in found.warnings:
        warn(line)
    return found.plan


def _check(cfg: Config) -> Checked:
    """The preflight and the plan, made now; missing data is refused first, before torch is imported."""
    try:
        require_sources(cfg.data.name, dataset_root(cfg.data), cfg.data.download)
    except OSError:  # a path the file system refuses: the preflight names it
        pass
    from fl_ee.federation.plan import make_plan
    from fl_ee.federation.preflight import config_warnings, preflight

    checked = preflight(cfg, warnings=False)
    return Checked(make_plan(checked), config_warnings(checked))


def check_key(cfg: Config) -> dict[str, Any] | None:
    """Everything a check of ``cfg`` (paths absolute) depends on; ``None`` when that cannot be told without it."""
    plugins = (cfg.strategy.name, cfg.strategy.selection, cfg.personalisation.mode)
    if any(":" in name for name in plugins):
        return None
    try:
        data = source_key(cfg.data.name, dataset_root(cfg.data))
        named = [_stat(Path(p)) for p in (cfg.model.weights, cfg.simulation.availability_trace,
                                          cfg.simulation.capacity_trace) if p]
        code = [_stat(p) for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    except (OSError, UserError):  # the check itself says what is wrong
        return None
    if data is None:
        return None
    libraries = [_stat(Path(p)) for p in sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})]
    return {"config": config_to_json(cfg), "data": data, "files": named, "code": code, "libraries": libraries}


def _stat(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _dump(found: Checked) -> dict[str, Any]:
    plan = {f.name: getattr(found.plan, f.name) for f in dataclasses.fields(Plan) if f.name != "cfg"}
    plan["tiers"] = [dataclasses.asdict(t) for t in found.plan.tiers]
    return {"plan": plan, "warnings": found.warnings}


def _parse(cfg: Config, body: dict[str, Any]) -> Checked:
    """The record's check; ``TypeError`` or ``KeyError`` when a field is missing, extra or of another type."""
    plan = dict(body["plan"])
    plan["tiers"] = [_typed(TierPlan, tier) for tier in plan["tiers"]]
    warnings = body["warnings"]
    if not isinstance(warnings, list) or not all(isinstance(line, str) for line in warnings):
        raise TypeError("warnings are not a list of lines")
    return Checked(_typed(Plan, {"cfg": cfg, **plan}), warnings)


def _typed(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` once every value has its field's type (JSON writes a whole float as an int)."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        want = hints[name]
        union = isinstance(want, types.UnionType) or typing.get_origin(want) is typing.Union
        if not _fits(value, typing.get_args(want) if union else (want,)):
            raise TypeError(f"{cls.__name__}.{name} is not a {want}")
    return cls(**values)


def _fits(value: Any, allowed: tuple[Any, ...]) -> bool:
    if value is None or isinstance(value, bool):
        return type(value) in allowed
    if type(value) is int and float in allowed:
        return True
    return any(isinstance(value, typing.get_origin(a) or a) for a in allowed if a is not type(None))
