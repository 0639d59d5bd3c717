"""ScaleFL: width and depth scaled together, each tier's deepest exit teaching its earlier ones.

Ilhan et al., CVPR 2023, "ScaleFL: Resource-Adaptive Federated Learning with
Heterogeneous Clients" (``git-disl/scale-fl``). A tier holds a depth and a width ratio (``tiers.N.depth``,
``tiers.N.width``); the server averages each element over the clients that hold it,
unweighted as ScaleFL's ``average_weights`` (``weighted=true``: by example count). Its loss is
fl-ee's last-exit distillation, which the shared step already has: cross-entropy at every
exit plus ``kd_weight x KL(deepest exit || exit i) x T^2`` over the client's earlier exits,
at ``training.distillation = "last-exit"``, ``kd_temperature = 3`` and ``kd_weight = 0.05``
(fl-ee's defaults, ScaleFL's values), from round ``training.kd_warmup_rounds`` on (ScaleFL
warms up for a quarter of the rounds: set it to ``rounds / 4``). A run that turns the
distillation off is warned about (:func:`fl_ee.federation.preflight.config_warnings`).
"""

from __future__ import annotations

from fl_ee.core.config import Config
from strategies.depthfl import DepthFL
from strategies.registry import strategy_class


class ScaleFL(DepthFL):
    """ScaleFL: width and depth tiers averaged element by element; last-exit distillation in the shared step."""

    def __init__(self, *, weighted: bool = False, **kwargs) -> None:
        super().__init__(weighted=weighted, **kwargs)


def distillation_off(cfg: Config) -> str | None:
    """Why a ``scalefl`` run (or a subclass's) trains without ScaleFL's distillation, or ``None``."""
    if not issubclass(strategy_class(cfg.strategy.name), ScaleFL):
        return None
    t = cfg.training
    if t.distillation != "last-exit":
        return f"training.distillation = {t.distillation}"
    return "training.kd_weight = 0" if t.kd_weight == 0 else None
