"""Server-side aggregation: ``DepthAwareStrategy`` (the plug-in point) and shipped strategies."""

import fl_ee.core  # noqa: F401, I001  (first: fl_ee keeps Flower's telemetry off before flwr loads)
from strategies.aggregation import holder_aggregate, weighted_mean
from strategies.base import ClientInfo, DepthAwareStrategy, OptionError, check_option
from strategies.depthfl import DepthFL
from strategies.exclusive import Exclusive
from strategies.fedadam import FedAdam
from strategies.fedavgm import FedAvgM
from strategies.feddyn import FedDyn
from strategies.fedyogi import FedYogi
from strategies.qfedavg import QFedAvg
from strategies.registry import available, build_strategy, strategy_class

__all__ = [
    "ClientInfo",
    "DepthAwareStrategy",
    "DepthFL",
    "Exclusive",
    "FedAdam",
    "FedAvgM",
    "FedDyn",
    "FedYogi",
    "OptionError",
    "QFedAvg",
    "available",
    "build_strategy",
    "check_option",
    "holder_aggregate",
    "strategy_class",
    "weighted_mean",
]
