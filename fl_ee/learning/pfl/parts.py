"""Body and head of an early-exit submodel, and what the personalised-FL baselines share.

The *body* is the backbone's stages (:data:`BODY`), the *head* every exit head of the
client's submodel (:data:`HEAD`): a depth-``d`` client's head is its ``d`` exits. A
method that keeps one part on the client (:class:`PartlyShared`) lays the kept copy over
the received submodel before it trains or evaluates (:func:`overlay`), keeps it after
training (:func:`kept_part`) and sends only the other part.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

from fl_ee.core.config import Config
from fl_ee.core.errors import UserError
from fl_ee.core.plugins import check_option
from fl_ee.learning.algorithm import ClientAlgorithm, LocalEvaluation, LocalTraining, Losses
from fl_ee.models import EarlyExitNet, Flops, training_flops

BODY, HEAD = "stages.", "exits."  # state-key prefixes of the backbone stages and of the exit heads


def trains_backbone(cfg: Config) -> None:
    """Refuse ``training.scheme = ic-only``, which freezes the backbone these methods train every round."""
    if cfg.training.scheme == "ic-only":
        raise UserError(f"{cfg.personalisation.mode} trains the backbone in every round; use training.scheme = e2e "
                        "with it", key="training.scheme")


def check_epochs(value: Any, option: str) -> int:
    """``value`` when it is an integer >= 1, else the option's error."""
    check_option(isinstance(value, int) and not isinstance(value, bool) and value >= 1, option,
                 f"must be an integer >= 1, got {value!r}")
    return value


def overlay(model: nn.Module, state: Mapping[str, torch.Tensor], namespace: str) -> bool:
    """Load the kept ``<namespace>/<key>`` arrays of ``model``'s keys onto it, in place; whether there were any."""
    own = model.state_dict()
    saved = {key: value for name, value in state.items()
             if (key := name.removeprefix(f"{namespace}/")) != name and key in own}
    if saved:
        model.load_state_dict(saved, strict=False)
    return bool(saved)


def personal_copy(model: EarlyExitNet, state: Mapping[str, torch.Tensor], namespace: str) -> EarlyExitNet:
    """A copy of ``model`` with the kept arrays laid over it (the received model itself before the first)."""
    personal = copy.deepcopy(model)
    overlay(personal, state, namespace)
    return personal


def kept_part(model: nn.Module, namespace: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """``model``'s tensors whose keys start with ``prefix``, named ``<namespace>/<key>``."""
    return {f"{namespace}/{key}": value for key, value in model.state_dict().items() if key.startswith(prefix)}


def without(keys: Sequence[str], prefix: str) -> list[str]:
    """The ``keys`` not starting with ``prefix``."""
    return [key for key in keys if not key.startswith(prefix)]


@contextmanager
def frozen_params(module: nn.Module) -> Iterator[None]:
    """Within the block no parameter of ``module`` gets a gradient (SGD leaves them as they are)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def submodel_training_flops(flops: Flops, depth: int, num_train: int, epochs: int) -> float:
    """Training a depth-``depth`` submodel end to end: ``3 x forward x samples x epochs``."""
    return training_flops(flops.exit_costs()[depth - 1], num_train, epochs)


class PartlyShared(ClientAlgorithm):
    """One part of the submodel (:attr:`personal`: :data:`BODY` or :data:`HEAD`) kept on the client, the rest shared.

    Training lays the kept part over the received submodel and runs the shared step over
    the whole of it; the client keeps the trained part and sends the others. Evaluation
    uses the received submodel with the kept part laid over it.
    """

    personal: ClassVar[str]

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        trains_backbone(cfg)

    def train(self, local: LocalTraining) -> Losses:
        """The shared step over the received submodel with the kept part laid over it."""
        overlay(local.model, local.state, self.namespace)
        return Losses(local.shared_step())

    def kept(self, local: LocalTraining) -> dict[str, torch.Tensor]:
        """The personal part as trained, ``<namespace>/<key>``."""
        return kept_part(local.model, self.namespace, self.personal)

    def sent(self, keys: Sequence[str]) -> Collection[str]:
        """Every key but the personal part's."""
        return without(keys, self.personal)

    def evaluation(self, local: LocalEvaluation) -> tuple[EarlyExitNet, None]:
        """The received submodel with the kept part laid over it."""
        overlay(local.model, local.state, self.namespace)
        return local.model, None
