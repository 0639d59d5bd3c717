"""Finding a strategy by name: shipped ones, ``fl_ee.strategies`` entry points, or ``module:Class``."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from importlib.metadata import entry_points
from typing import Any

from fl_ee.errors import UserError
from strategies.base import DepthAwareStrategy, OptionError

ENTRY_POINT_GROUP = "fl_ee.strategies"
SHIPPED = {
    "depthfl": "strategies.depthfl:DepthFL",
    "exclusive": "strategies.exclusive:Exclusive",
    "feddyn": "strategies.feddyn:FedDyn",
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
            raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(sorted(names))} or package.module:Class",
                            key="strategy.name")
        path = names[name]
    cls = _import(path)
    if not (inspect.isclass(cls) and issubclass(cls, DepthAwareStrategy)):
        raise UserError(f"{path!r} is not a strategies.DepthAwareStrategy subclass", key="strategy.name")
    return cls


def build_strategy(name: str, options: dict[str, Any], fraction_train: float, fraction_evaluate: float,
                   seed: int) -> DepthAwareStrategy:
    """Instantiate a strategy; ``options`` become constructor arguments and unknown ones fail."""
    cls = strategy_class(name)
    accepted = _constructor_parameters(cls)
    for option in options:
        if option not in accepted or option in ("fraction_train", "fraction_evaluate", "seed"):
            raise UserError(f"unknown option for {name}; it takes {', '.join(sorted(accepted - {'fraction_train', 'fraction_evaluate', 'seed'})) or 'none'}",
                            key=f"strategy.options.{option}")
    try:
        return cls(fraction_train=fraction_train, fraction_evaluate=fraction_evaluate, seed=seed, **options)
    except OptionError as exc:
        raise UserError(exc.message, key=f"strategy.options.{exc.option}") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot build {name}: {exc}", key="strategy.options") from None


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
