"""Plug-ins by name: a shipped short name, an entry point of a group, or a ``package.module:Class`` path.

Server strategies (:mod:`strategies.registry`) and client algorithms
(:mod:`fl_ee.learning.algorithm`) are found and built the same way: the class a name
resolves to must subclass the plug-in point's base class, and the config's options
become its constructor's keyword arguments, unknown ones refused. Every problem is a
one-line :class:`~fl_ee.core.errors.UserError` naming the config key at fault.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar

from fl_ee.core.errors import UserError

T = TypeVar("T")


def import_path(path: str, key: str) -> Any:
    """The object ``package.module:attribute`` names; modules in the working directory are found too."""
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:  # plug-ins may live in the working directory
        sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot import {path!r}: {exc}", key=key) from None


def registered(shipped: Mapping[str, str], group: str) -> dict[str, str]:
    """Every short name, shipped and of the entry-point ``group``, to its ``module:Class`` path."""
    names = dict(shipped)
    names.update(_entry_points(group, tuple(sys.path)))
    return names


@functools.lru_cache(maxsize=16)
def _entry_points(group: str, search_path: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(name, ``module:Class``) of the entry points of ``group``, read once per ``search_path`` (``sys.path``).

    Reading them parses every installed distribution's metadata (about 10 ms), and clients
    resolve plug-ins on every call; a distribution installed later into a folder already on
    the path is not seen (as a running interpreter's imports would not see it either).
    """
    return tuple((ep.name, ep.value) for ep in entry_points(group=group))


def plugin_class(name: str, names: Mapping[str, str], base: type[T], *, kind: str, base_name: str, key: str) -> type[T]:
    """Resolve ``name`` (a short name of ``names``, or a ``module:Class`` path) to a subclass of ``base``.

    ``kind`` and ``base_name`` name the plug-in and its base class in messages
    (``strategy``, ``strategies.DepthAwareStrategy``); ``key`` is the config key reported.
    """
    if ":" in name:
        path = name
    elif name in names:
        path = names[name]
    else:
        raise UserError(f"unknown {kind} {name!r}; choose one of {', '.join(sorted(names))} or package.module:Class",
                        key=key)
    cls = import_path(path, key)
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise UserError(f"{path!r} is not a {base_name} subclass", key=key)
    return cls


def constructor_parameters(cls: type) -> set[str]:
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


class OptionError(ValueError):
    """A plug-in option with a bad value; ``option`` names it (reported as ``<section>.options.<option>``)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


def check_option(ok: bool, option: str, message: str) -> None:
    """Raise :class:`OptionError` for ``option`` unless ``ok``."""
    if not ok:
        raise OptionError(option, message)


def build(cls: type[T], name: str, options: Mapping[str, Any], framework: Mapping[str, Any], key: str) -> T:
    """``cls(**framework, **options)``: fl-ee's ``framework`` arguments and the config's ``options`` (at ``key``).

    An option the constructor does not take, an :class:`OptionError` or any ``TypeError`` /
    ``ValueError`` it raises is a :class:`~fl_ee.core.errors.UserError` naming the option.
    """
    accepted = constructor_parameters(cls) - set(framework)
    for option in options:
        if option not in accepted:
            raise UserError(f"unknown option for {name}; it takes {', '.join(sorted(accepted)) or 'none'}",
                            key=f"{key}.{option}")
    try:
        return cls(**framework, **options)
    except OptionError as exc:
        raise UserError(exc.message, key=f"{key}.{exc.option}") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot build {name}: {exc}", key=key) from None
