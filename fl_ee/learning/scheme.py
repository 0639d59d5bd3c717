"""Training schemes: which rounds train the backbone, and which tensors a client trains and returns.

``training.scheme = "e2e"`` trains stages and exits end to end in every round.
``"ic-only"`` (internal classifiers only) freezes the backbone: from round
``backbone_rounds + 1`` on, a client trains only its exit heads over the received
backbone and returns only its ``exits.*`` tensors, so holder aggregation never moves a
``stages.*`` tensor again. The backbone frozen is the global one after
``backbone_rounds`` rounds of end-to-end training, or, with ``backbone_rounds = 0``, the
one ``model.weights`` starts the run from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from fl_ee.core.config import TrainingConfig
from fl_ee.models import slice_state

T = TypeVar("T")


def backbone_frozen(cfg: TrainingConfig, server_round: int) -> bool:
    """Whether clients train only exit heads in ``server_round``."""
    return cfg.scheme == "ic-only" and server_round > cfg.backbone_rounds


def returned_state(state: Mapping[str, T], depth: int, frozen: bool) -> dict[str, T]:
    """What a depth-``depth`` client trains and returns: its slice, or only the slice's exits when ``frozen``."""
    sliced = slice_state(state, depth)
    return {k: v for k, v in sliced.items() if k.startswith("exits.")} if frozen else sliced
