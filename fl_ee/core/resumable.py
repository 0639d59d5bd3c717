"""Which config keys a resume may change: where things run and how often to checkpoint; none changes a result.

A run's checkpoints, a sweep's finished runs and the grouping of runs into settings all
compare configs without these keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fl_ee.core.config import Config, config_to_dict

RESUMABLE_KEYS = (
    "checkpoint_every",
    "data.root",
    "logging.tensorboard",
    "simulation.client_gpus",
    "simulation.pace",
    "simulation.ray_address",
    "simulation.time_scale",
)


def resumable_config(cfg: Config) -> dict[str, Any]:
    """The config as plain values without :data:`RESUMABLE_KEYS`: what a resume must leave unchanged."""
    raw = config_to_dict(cfg)
    for key in RESUMABLE_KEYS:
        section, _, name = key.rpartition(".")
        (raw[section] if section else raw).pop(name, None)
        if section and not raw[section]:  # a section of resumable keys only (logging): as if absent
            del raw[section]
    return json.loads(json.dumps(raw))


def config_difference(saved: Mapping[str, Any], cfg: Config) -> str | None:
    """The first dotted key where ``cfg`` differs from a checkpoint's saved config, or ``None``."""
    def walk(a: Any, b: Any, prefix: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if (found := walk(a.get(key), b.get(key), f"{prefix}{key}.")) is not None:
                    return found
            return None
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                if (found := walk(x, y, f"{prefix}{i}.")) is not None:
                    return found
            return None
        return None if a == b else prefix.rstrip(".")

    return walk(dict(saved), resumable_config(cfg), "")
