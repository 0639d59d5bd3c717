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
from strategies.fjord import FjORD
from strategies.heterofl import HeteroFL
from strategies.qfedavg import QFedAvg
from strategies.registry import available, build_strategy, network_spec, strategy_class
from strategies.scalefl import ScaleFL

__all__ = [
    "ClientInfo",
    "DepthAwareStrategy",
    "DepthFL",
    "Exclusive",
    "FedAdam",
    "FedAvgM",
    "FedDyn",
    "FedYogi",
    "FjORD",
    "HeteroFL",
    "OptionError",
    "QFedAvg",
    "ScaleFL",
    "available",
    "build_strategy",
    "check_option",
    "holder_aggregate",
    "network_spec",
    "strategy_class",
    "weighted_mean",
]
