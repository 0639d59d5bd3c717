"""fl-ee: federated personalisation of early-exit networks across device tiers.

A simulator sends nothing over the network: Flower's telemetry and Ray's usage
statistics are off unless the user's environment turns them on explicitly. This runs
before any module of fl-ee imports Flower or Ray.
"""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
