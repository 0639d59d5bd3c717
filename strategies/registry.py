"""Finding a strategy by name: shipped ones, ``fl_ee.strategies`` entry points, or ``module:Class``."""

from __future__ import annotations

from fl_ee.core.config import Config
from fl_ee.core.plugins import build, plugin_class, registered
from fl_ee.data.datasets import TensorDataset, load_dataset
from fl_ee.models import ModelSpec
from strategies.base import DepthAwareStrategy
from strategies.selection import build_selection

ENTRY_POINT_GROUP = "fl_ee.strategies"
SHIPPED = {
    "depthfl": "strategies.depthfl:DepthFL",
    "exclusive": "strategies.exclusive:Exclusive",
    "feddyn": "strategies.feddyn:FedDyn",
    "fedavgm": "strategies.fedavgm:FedAvgM",
    "fedadam": "strategies.fedadam:FedAdam",
    "fedyogi": "strategies.fedyogi:FedYogi",
    "fjord": "strategies.fjord:FjORD",
    "heterofl": "strategies.heterofl:HeteroFL",
    "qfedavg": "strategies.qfedavg:QFedAvg",
    "scalefl": "strategies.scalefl:ScaleFL",
}


def available() -> dict[str, str]:
    """Every short name (shipped and entry-point plug-ins) to its ``module:Class`` path."""
    return registered(SHIPPED, ENTRY_POINT_GROUP)


def strategy_class(name: str) -> type[DepthAwareStrategy]:
    """Resolve ``name`` to a :class:`DepthAwareStrategy` subclass."""
    return plugin_class(name, available(), DepthAwareStrategy, kind="strategy",
                        base_name="strategies.DepthAwareStrategy", key="strategy.name")


def network_spec(cfg: Config, data: TensorDataset | None = None) -> ModelSpec:
    """The network a run trains: the config's, fitted to its dataset, as its strategy has it.

    ``data`` is the run's dataset (loaded if not given); the strategy may change the network
    (:meth:`~strategies.base.DepthAwareStrategy.model_spec`: HeteroFL's static batch norm).
    """
    data = load_dataset(cfg.data) if data is None else data
    return build_strategy(cfg).model_spec(data.model_spec(cfg.model))


def build_strategy(cfg: Config) -> DepthAwareStrategy:
    """The configured strategy; ``strategy.options`` become constructor arguments and unknown ones fail."""
    s = cfg.strategy
    overcommit = cfg.simulation.overcommit if cfg.simulation.straggler_policy == "overselect" else 0.0
    framework = {"fraction_train": s.fraction_train, "fraction_evaluate": s.fraction_evaluate, "seed": cfg.seed,
                 "overcommit": overcommit}
    strategy = build(strategy_class(s.name), s.name, s.options, framework, "strategy.options")
    strategy.selection = build_selection(cfg)
    strategy.evaluate_all_in = cfg.rounds if s.final_evaluate_all else None
    return strategy
