"""Finding a strategy by name: shipped ones, ``fl_ee.strategies`` entry points, or ``module:Class``."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from importlib.metadata import entry_points
from typing import Any

from fl_ee.core.config import Config
from fl_ee.core.errors import UserError
from strategies.base import DepthAwareStrategy, OptionError

ENTRY_POINT_GROUP = "fl_ee.strategies"
SHIPPED = {
    "depthfl": "strategies.depthfl:DepthFL",
    "exclusive": "strategies.exclusive:Exclusive",
    "feddyn": "strategies.feddyn:FedDyn",
    "fedavgm": "strategies.fedavgm:FedAvgM",
    "fedadam": "strategies.fedadam:FedAdam",
    "fedyogi": "strategies.fedyogi:FedYogi",
    "qfedavg": "strategies.qfedavg:QFedAvg",
}


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:  # plug-ins may live in the working directory
        sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot import {path!r}: {exc}", key="strategy.name") from None


def available() -> dict[str, str]:
    """Every short name (shipped and entry-point plug-ins) to its ``module:Class`` path."""
    names = dict(SHIPPED)
    names.update({ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)})
    return names


def strategy_class(name: str) -> type[DepthAwareStrategy]:
    """Resolve ``name`` to a :class:`DepthAwareStrategy` subclass."""
    if ":" in name:
        path = name
    else:
        names = available()
        if name not in names:
            choices = ", ".join(sorted(names))
            raise UserError(f"unknown strategy {name!r}; choose one of {choices} or package.module:Class",
                            key="strategy.name")
        path = names[name]
    cls = _import(path)
    if not (inspect.isclass(cls) and issubclass(cls, DepthAwareStrategy)):
        raise UserError(f"{path!r} is not a strategies.DepthAwareStrategy subclass", key="strategy.name")
    return cls


FRAMEWORK_ARGUMENTS = ("fraction_train", "fraction_evaluate", "seed", "overcommit")  # set from the config, not options


def build_strategy(cfg: Config) -> DepthAwareStrategy:
    """The configured strategy; ``strategy.options`` become constructor arguments and unknown ones fail."""
    s = cfg.strategy
    cls = strategy_class(s.name)
    accepted = _constructor_parameters(cls) - set(FRAMEWORK_ARGUMENTS)
    for option in s.options:
        if option not in accepted:
            raise UserError(f"unknown option for {s.name}; it takes {', '.join(sorted(accepted)) or 'none'}",
                            key=f"strategy.options.{option}")
    overcommit = cfg.simulation.overcommit if cfg.simulation.straggler_policy == "overselect" else 0.0
    try:
        return cls(fraction_train=s.fraction_train, fraction_evaluate=s.fraction_evaluate, seed=cfg.seed,
                   overcommit=overcommit, **s.options)
    except OptionError as exc:
        raise UserError(exc.message, key=f"strategy.options.{exc.option}") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot build {s.name}: {exc}", key="strategy.options") from None


def _constructor_parameters(cls: type) -> set[str]:
    """Named parameters along the ``__init__`` chain (following ``**kwargs`` to the parents)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names
