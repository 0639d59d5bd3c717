"""Server-side aggregation: ``DepthAwareStrategy`` (the plug-in point) and shipped strategies."""

from strategies.aggregation import holder_aggregate, weighted_mean
from strategies.base import ClientInfo, DepthAwareStrategy
from strategies.depthfl import DepthFL
from strategies.registry import available, build_strategy, strategy_class

__all__ = [
    "ClientInfo",
    "DepthAwareStrategy",
    "DepthFL",
    "available",
    "build_strategy",
    "holder_aggregate",
    "strategy_class",
    "weighted_mean",
]
