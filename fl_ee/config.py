"""The run configuration: a TOML file plus dotted overrides, typed and validated once.

Every section is a frozen dataclass; :func:`load_config` is the only way in, so a
``Config`` that exists is a valid one. Problems raise :class:`UserError` naming the
dotted key (``data.alpha``, ``tiers.1.depth``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import tomli_w
import tomllib

from fl_ee.errors import UserError

MAX_DEPTH = 4
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "imagefolder")
PARTITIONERS = ("iid", "dirichlet", "shards")
EXIT_HEADS = ("linear", "mlp")
DISTILLATION = ("last-exit", "mutual", "none")
PERSONALISATION = ("exits", "none")
EXIT_POLICIES = ("entropy", "max-prob")
STRAGGLER_POLICIES = ("wait", "deadline", "overselect")
DEFAULT_PRESET = "quickstart"


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives, and how it is split over clients."""

    name: str = "digits"
    root: str = "data"
    download: bool = False
    num_clients: int = 20
    partitioner: str = "dirichlet"
    alpha: float = 0.5
    shards_per_client: int = 2
    test_fraction: float = 0.2


@dataclass(frozen=True)
class ModelConfig:
    """The early-exit backbone: ``cnn`` has 4 stages of widths w, 2w, 4w, 4w."""

    backbone: str = "cnn"
    exit_head: str = "mlp"
    width: int = 16


@dataclass(frozen=True)
class TrainingConfig:
    """Local training: the loss of both steps, and SGD for the shared step.

    ``distillation``: ``last-exit`` (the deepest exit teaches the others), ``mutual``
    (every exit learns from every other, DepthFL) or ``none``; its weight is 0 in rounds
    before ``kd_warmup_rounds``. ``prox_mu`` adds FedProx's (mu/2)||w - w_global||^2 on
    the shared tensors.
    """

    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    distillation: str = "last-exit"
    kd_temperature: float = 3.0
    kd_weight: float = 0.5
    kd_warmup_rounds: int = 0
    prox_mu: float = 0.0


@dataclass(frozen=True)
class PersonalisationConfig:
    """Personal exit heads trained over the frozen global backbone, kept on the client."""

    mode: str = "exits"
    epochs: int = 1


@dataclass(frozen=True)
class StrategyConfig:
    """Server aggregation: a registered name or ``package.module:Class``."""

    name: str = "depthfl"
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExitPolicyConfig:
    """When a sample leaves the network early at inference time."""

    name: str = "entropy"
    threshold: float = 0.5


@dataclass(frozen=True)
class SimulationConfig:
    """The virtual clock's straggler policy, optional real pacing, and Ray resources.

    ``deadline_s`` and ``target_accuracy`` are unset at 0; ``ray_address`` empty starts
    a local Ray instance, ``auto`` or ``host:port`` attaches to a running cluster.
    """

    straggler_policy: str = "wait"
    deadline_s: float = 0.0
    overcommit: float = 0.3
    target_accuracy: float = 0.0
    pace: bool = False
    time_scale: float = 1.0
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    ray_address: str = ""


@dataclass(frozen=True)
class TierConfig:
    """A device tier: its share of clients, the depth they hold, and how fast they are.

    ``preset`` names a device profile (``sims/devices.py``) whose fields fill in any
    left unset. ``speed_sigma`` spreads clients' compute speeds within the tier
    (lognormal with median 1, fixed per client).
    """

    name: str
    share: float
    depth: int
    preset: str = ""
    compute_gflops: float = 20.0
    download_mbps: float = 30.0
    upload_mbps: float = 10.0
    availability: float = 1.0
    failure_rate: float = 0.0
    speed_sigma: float = 0.0


@dataclass(frozen=True)
class Config:
    """A whole run."""

    seed: int = 0
    rounds: int = 10
    eval_every: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    personalisation: PersonalisationConfig = field(default_factory=PersonalisationConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    exit_policy: ExitPolicyConfig = field(default_factory=ExitPolicyConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    tiers: tuple[TierConfig, ...] = (TierConfig("full", 1.0, MAX_DEPTH),)

    @property
    def max_depth(self) -> int:
        """The deepest depth any tier holds."""
        return max(t.depth for t in self.tiers)


# --------------------------------------------------------------------------- loading


def preset_path(name: str) -> Path:
    """The TOML file of a shipped preset (``quickstart``, ``fmnist-3tiers``, ...)."""
    return Path(str(resources.files("sims") / "presets" / f"{name}.toml"))


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is a :class:`UserError`."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None


def resolve_config_path(spec: str | None) -> Path:
    """A config argument is a file path, or the name of a shipped preset."""
    if spec is None:
        return preset_path(DEFAULT_PRESET)
    path = Path(spec)
    if not path.exists() and "/" not in spec and not spec.endswith(".toml"):
        preset = preset_path(spec)
        if preset.exists():
            return preset
    return path


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML literal (``3``, ``0.5``, ``true``, ``"x"``) or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["data.alpha=0.1", ...]`` to ``{"data.alpha": 0.1, ...}``."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value")
        overrides[key.strip()] = parse_value(value.strip())
    return overrides


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``tiers.0.depth`` indexes the tier list) in a copy of ``raw``."""
    raw = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            here = ".".join(parts[: i + 1])
            if isinstance(node, list):
                node = node[_list_index(node, part, here)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise UserError("is not a table", key=here)
        if isinstance(node, list):
            node[_list_index(node, parts[-1], dotted)] = value
        else:
            node[parts[-1]] = value
    return raw


def _list_index(items: list[Any], part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise UserError(f"no entry {part!r} (there are {len(items)})", key=key)
    return int(part)


def load_config(spec: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a config file or preset, apply overrides, validate, and return it."""
    raw = read_toml(resolve_config_path(spec))
    return config_from_dict(apply_overrides(raw, overrides or {}))


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from plain values."""
    config = _build(Config, _with_device_presets(raw), "")
    validate(config)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain values (tiers as a list of tables), ready for TOML or JSON."""
    raw = dataclasses.asdict(config)
    raw["tiers"] = [dict(t) for t in raw["tiers"]]
    return raw


def config_to_toml(config: Config) -> str:
    """The resolved config as TOML; loading it gives the same :class:`Config`."""
    return tomli_w.dumps(config_to_dict(config))


def config_to_json(config: Config) -> str:
    """The resolved config as canonical JSON (what clients receive)."""
    return json.dumps(config_to_dict(config), sort_keys=True)


# ------------------------------------------------------------------ typed building


def _with_device_presets(raw: dict[str, Any]) -> dict[str, Any]:
    """Fill each tier's unset fields from the device profile its ``preset`` names."""
    from sims.devices import DEVICES

    tiers = raw.get("tiers")
    if not isinstance(tiers, list):
        return raw
    filled = []
    for i, tier in enumerate(tiers):
        name = tier.get("preset", "") if isinstance(tier, dict) else ""
        if name:
            if name not in DEVICES:
                raise UserError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}", key=f"tiers.{i}.preset")
            tier = {**dataclasses.asdict(DEVICES[name]), **tier}
        filled.append(tier)
    return {**raw, "tiers": filled}



def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise UserError("expected a table", key=prefix.rstrip(".") or None)
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise UserError("unknown key", key=f"{prefix}{key}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError("missing", key=key)
            continue
        values[f.name] = _coerce(hints[f.name], raw[f.name], key)
    return cls(**values)


def _coerce(kind: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, f"{key}.")
    origin = get_origin(kind)
    if origin is tuple:
        item = get_args(kind)[0]
        if not isinstance(value, list) or not value:
            raise UserError("expected a non-empty array of tables", key=key)
        return tuple(_coerce(item, v, f"{key}.{i}") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError("expected a table", key=key)
        return dict(value)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise UserError(f"expected {kind.__name__}, got {value!r}", key=key)
    return value


# --------------------------------------------------------------------- validation


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(message, key=key)


def _one_of(value: str, choices: tuple[str, ...], key: str) -> None:
    _require(value in choices, key, f"unknown value {value!r}; choose one of {', '.join(choices)}")


def validate(c: Config) -> None:
    """Check value ranges and choices; raises :class:`UserError` on the first problem."""
    _require(c.rounds >= 1, "rounds", "must be at least 1")
    _require(c.eval_every >= 1, "eval_every", "must be at least 1")

    d = c.data
    _one_of(d.name, DATASETS, "data.name")
    _one_of(d.partitioner, PARTITIONERS, "data.partitioner")
    _require(d.num_clients >= 1, "data.num_clients", "must be at least 1")
    _require(d.alpha > 0, "data.alpha", "must be > 0")
    _require(d.shards_per_client >= 1, "data.shards_per_client", "must be at least 1")
    _require(0 < d.test_fraction < 1, "data.test_fraction", "must be in (0, 1)")

    m = c.model
    _one_of(m.backbone, ("cnn",), "model.backbone")
    _one_of(m.exit_head, EXIT_HEADS, "model.exit_head")
    _require(m.width >= 1, "model.width", "must be at least 1")

    t = c.training
    _require(t.local_epochs >= 1, "training.local_epochs", "must be at least 1")
    _require(t.batch_size >= 1, "training.batch_size", "must be at least 1")
    _require(t.lr > 0, "training.lr", "must be > 0")
    _require(0 <= t.momentum < 1, "training.momentum", "must be in [0, 1)")
    _one_of(t.distillation, DISTILLATION, "training.distillation")
    _require(t.kd_temperature > 0, "training.kd_temperature", "must be > 0")
    _require(t.kd_weight >= 0, "training.kd_weight", "must be >= 0")
    _require(t.kd_warmup_rounds >= 0, "training.kd_warmup_rounds", "must be >= 0")
    _require(t.prox_mu >= 0, "training.prox_mu", "must be >= 0")

    _one_of(c.personalisation.mode, PERSONALISATION, "personalisation.mode")
    _require(c.personalisation.epochs >= 1, "personalisation.epochs", "must be at least 1")

    s = c.strategy
    _require(0 < s.fraction_train <= 1, "strategy.fraction_train", "must be in (0, 1]")
    _require(0 <= s.fraction_evaluate <= 1, "strategy.fraction_evaluate", "must be in [0, 1]")

    _one_of(c.exit_policy.name, EXIT_POLICIES, "exit_policy.name")
    _require(0 <= c.exit_policy.threshold <= 1, "exit_policy.threshold", "must be in [0, 1]")

    sim = c.simulation
    _one_of(sim.straggler_policy, STRAGGLER_POLICIES, "simulation.straggler_policy")
    _require(sim.deadline_s >= 0, "simulation.deadline_s", "must be >= 0")
    _require(sim.straggler_policy != "deadline" or sim.deadline_s > 0, "simulation.deadline_s",
             "must be set (> 0) when straggler_policy is deadline")
    _require(sim.overcommit >= 0, "simulation.overcommit", "must be >= 0")
    _require(0 <= sim.target_accuracy <= 1, "simulation.target_accuracy", "must be in [0, 1] (0: unset)")
    _require(sim.time_scale > 0, "simulation.time_scale", "must be > 0")
    _require(sim.client_cpus > 0, "simulation.client_cpus", "must be > 0")
    _require(sim.client_gpus >= 0, "simulation.client_gpus", "must be >= 0")

    names = [tier.name for tier in c.tiers]
    _require(len(set(names)) == len(names), "tiers", f"tier names must be unique, got {names}")
    for i, tier in enumerate(c.tiers):
        _require(bool(tier.name), f"tiers.{i}.name", "must not be empty")
        _require(0 < tier.share <= 1, f"tiers.{i}.share", "must be in (0, 1]")
        _require(1 <= tier.depth <= MAX_DEPTH, f"tiers.{i}.depth", f"must be in 1..{MAX_DEPTH}")
        for key in ("compute_gflops", "download_mbps", "upload_mbps"):
            _require(getattr(tier, key) > 0, f"tiers.{i}.{key}", "must be > 0")
        _require(0 <= tier.availability <= 1, f"tiers.{i}.availability", "must be in [0, 1]")
        _require(0 <= tier.failure_rate <= 1, f"tiers.{i}.failure_rate", "must be in [0, 1]")
        _require(tier.speed_sigma >= 0, f"tiers.{i}.speed_sigma", "must be >= 0")
    total = sum(tier.share for tier in c.tiers)
    _require(math.isclose(total, 1.0, abs_tol=1e-6), "tiers", f"shares must sum to 1, got {total:g}")


def config_from_saved(raw: dict[str, Any]) -> Config:
    """A run directory's stored config."""
    return config_from_dict(raw)
