"""APFL: a personal model mixed with the global one by a weight alpha.

Deng, Kamani and Mahdavi, "Adaptive Personalized Federated Learning", arXiv:2003.13461,
2020. Each client keeps a local model ``v`` and evaluates the mixture
``v_bar = alpha v + (1 - alpha) w`` with the global model ``w``; ``v`` is trained through
the mixture, ``v <- v - lr grad_v f(v_bar) = v - lr alpha grad f(v_bar)``, while ``w`` is
trained and sent as in FedAvg. With adaptive mixing alpha also descends its own gradient,
``alpha <- alpha - lr <v - w, grad f(v_bar)>``, kept in ``[0, 1]``. The paper's
experiments use fixed alphas (0.25, 0.5, 0.75) and the adaptive one.

On an early-exit submodel ``v`` is the client's whole submodel (body and head: stages
and exits), kept as ``apfl/<key>`` with, when adaptive, ``apfl/alpha``; the mixture mixes
every parameter and keeps ``v``'s buffers (batch norm statistics gathered through the
mixture). A client's first round starts ``v`` from the received model. A round trains
``v`` through the mixture with the received ``w`` for ``training.local_epochs`` (the
shared step's loss over every exit; ``alpha``, default 0.25, updated every step with
``adaptive = true`` from ``alpha`` on), then runs the shared step and sends all of the
submodel. The paper interleaves the two models' steps, so ``v`` is mixed with the
client's ``w`` as it trains; here it is mixed with ``w`` as received, the global model of
the paper's objective and the one it is mixed with at evaluation, and the shared step
runs unchanged (FedProx's and FedDyn's terms included). Evaluation: the mixture of the
kept ``v`` with the received ``w``. The clock charges a second end-to-end training of
the submodel; mixing (3 FLOPs per parameter and step) is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch.func import functional_call

from fl_ee.core.config import Config, TrainingConfig
from fl_ee.core.plugins import check_option
from fl_ee.learning.algorithm import ClientAlgorithm, LocalEvaluation, LocalTraining, Losses
from fl_ee.learning.augment import crop_and_flip
from fl_ee.learning.pfl.parts import kept_part, personal_copy, submodel_training_flops, trains_backbone
from fl_ee.learning.training import exit_loss, fit
from fl_ee.models import EarlyExitNet, Flops

ALPHA = "alpha"  # the kept mixing weight's name under the namespace


def mixture(
    personal: EarlyExitNet, received: EarlyExitNet, alpha: float | torch.Tensor
) -> dict[str, torch.Tensor]:
    """``alpha v + (1 - alpha) w`` of every parameter, ``v = personal`` and ``w = received`` (detached)."""
    w = dict(received.named_parameters())
    return {name: alpha * v + (1 - alpha) * w[name].detach() for name, v in personal.named_parameters()}


def train_apfl(
    personal: EarlyExitNet, received: EarlyExitNet, x: torch.Tensor, y: torch.Tensor, cfg: TrainingConfig,
    epochs: int, generator: torch.Generator, alpha: float, adaptive: bool, augment: bool = False,
) -> tuple[float, float]:
    """Train ``personal`` through its mixture with ``received``; (the mean loss, alpha after training).

    Each batch's loss is that of ``cfg`` at the mixture (``personal``'s buffers), so
    ``personal`` steps along ``alpha`` times the mixture's gradient; with ``adaptive``,
    alpha then takes a plain gradient step at ``cfg.lr`` and is clipped to ``[0, 1]``.
    ``received`` is left as it is.
    """
    a = torch.tensor(float(alpha), requires_grad=adaptive)
    personal.train()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        inputs = crop_and_flip(x[idx], generator) if augment else x[idx]
        return exit_loss(functional_call(personal, mixture(personal, received, a), (inputs,)), y[idx], cfg)

    def step_alpha() -> None:
        with torch.no_grad():
            a.sub_(cfg.lr * cast(torch.Tensor, a.grad)).clamp_(0.0, 1.0)
        a.grad = None

    loss = fit(personal.parameters(), cfg.model_copy(update={"prox_mu": 0.0}), epochs, len(y), generator,
               batch_loss, step_alpha if adaptive else None)
    return loss, float(a.detach())


class APFL(ClientAlgorithm):
    """apfl: a personal submodel mixed with the received global one by alpha, fixed or adaptive (Deng et al. 2020)."""

    def __init__(self, cfg: Config, *, alpha: float = 0.25, adaptive: bool = False) -> None:
        super().__init__(cfg)
        trains_backbone(cfg)
        check_option(isinstance(alpha, int | float) and not isinstance(alpha, bool) and 0 <= alpha <= 1, "alpha",
                     f"must be a number in [0, 1], got {alpha!r}")
        check_option(isinstance(adaptive, bool), "adaptive", f"must be true or false, got {adaptive!r}")
        self.alpha, self.adaptive = float(alpha), adaptive

    def alpha_of(self, state: Mapping[str, torch.Tensor]) -> float:
        """The client's mixing weight: its kept one when adaptive, else ``alpha``."""
        key = f"{self.namespace}/{ALPHA}"
        return float(state[key]) if self.adaptive and key in state else self.alpha

    def train(self, local: LocalTraining) -> Losses:
        """The personal step (:func:`train_apfl`), then the shared step."""
        self.personal = personal_copy(local.model, local.state, self.namespace)
        t = local.training
        personal, self.mixed_alpha = train_apfl(self.personal, local.model, local.x, local.y, t, t.local_epochs,
                                                local.generator, self.alpha_of(local.state), self.adaptive,
                                                self.cfg.data.augment)
        return Losses(local.shared_step(), personal)

    def kept(self, local: LocalTraining) -> dict[str, torch.Tensor]:
        """The personal submodel, ``apfl/<key>``, and when adaptive its alpha, ``apfl/alpha``."""
        kept = kept_part(self.personal, self.namespace)
        if self.adaptive:
            kept[f"{self.namespace}/{ALPHA}"] = torch.tensor(self.mixed_alpha, dtype=torch.float64)
        return kept

    def evaluation(self, local: LocalEvaluation) -> tuple[EarlyExitNet, None]:
        """The mixture of the kept personal submodel with the received one (the received one before the first)."""
        personal = personal_copy(local.model, local.state, self.namespace)
        with torch.no_grad():
            mixed = mixture(personal, local.model, self.alpha_of(local.state))
        personal.load_state_dict(mixed, strict=False)
        return personal, None

    def train_flops(self, flops: Flops, depth: int, num_train: int, frozen: bool) -> float:
        """The personal step: the submodel trained end to end (through the mixture) for ``training.local_epochs``."""
        return submodel_training_flops(flops, depth, num_train, self.cfg.training.local_epochs)
