"""FjORD: ordered dropout, every client training all the tier widths up to its own.

Horvath et al., NeurIPS 2021, "FjORD: Fair and Accurate Federated Learning under
heterogeneous targets with Ordered Dropout" (Flower baseline ``baselines/fjord``). A client of width
ratio ``r`` (``tiers.N.width``) holds the first ``ceil(r x c)`` channels of every layer and,
at each local step, trains the first ``ceil(p x c)`` of them for a width ``p`` drawn
uniformly from the run's tier widths up to ``r`` (:mod:`fl_ee.learning.widths`; the client
side comes with the strategy, as FedDyn's does). The server averages each element over
the clients that hold it, weighted by example count, as the baseline's nested averaging
(``weighted=false``: unweighted). ``distill=true`` adds FjORD's self-distillation: each step
also trains the client's own width, whose soft outputs teach the drawn one exit by exit.

Left out: FjORD keeps a separate batch norm per width; here batch norm's affine
parameters and statistics are sliced like any tensor (GroupNorm, the default, has no
statistics). The ordered dropout applies to end-to-end steps, not to the exits-only steps
of ``training.scheme = ic-only``.
"""

from __future__ import annotations

from fl_ee.core.config import Config
from fl_ee.learning.widths import OrderedDropout
from strategies.base import check_option
from strategies.depthfl import DepthFL
from strategies.registry import build_strategy, strategy_class


class FjORD(DepthFL):
    """FjORD: ordered dropout over the tier widths up to each client's own; nested, example-weighted averaging."""

    def __init__(self, *, weighted: bool = True, distill: bool = False, **kwargs) -> None:
        super().__init__(weighted=weighted, **kwargs)
        check_option(isinstance(distill, bool), "distill", f"expected true or false, got {distill!r}")
        self.distill = distill

    def ordered_dropout(self, width: float, widths: list[float]) -> OrderedDropout:
        """What a client of ``width`` draws from: the run's tier ``widths`` up to its own, increasing."""
        return OrderedDropout(tuple(sorted({w for w in widths if w <= width} | {width})), self.distill)


def client_dropout(cfg: Config, width: float) -> OrderedDropout | None:
    """The ordered dropout of a client of ``width``: the strategy's, when it is :class:`FjORD` or a subclass."""
    strategy = build_strategy(cfg) if issubclass(strategy_class(cfg.strategy.name), FjORD) else None
    return strategy.ordered_dropout(width, [t.width for t in cfg.tiers]) if isinstance(strategy, FjORD) else None
