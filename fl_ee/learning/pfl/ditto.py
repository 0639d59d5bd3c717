"""Ditto: a personal model held near the global one by a proximal term.

Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML 2021. Each selected client trains the global model as FedAvg does
and sends it, and trains its own model ``v`` on

    f_k(v) + (lambda / 2) ||v - w||^2

where ``w`` is the global model it received: every step is
``v <- v - lr (grad f_k(v) + lambda (v - w))``. In the authors' code
(``litian96/ditto``) each local iteration takes one step of each model, and their
Fashion-MNIST runs use ``lambda = 1`` (``run_fashion_clean_ditto_lam1.sh``).

On an early-exit submodel the personal model is the client's whole submodel (body and
head: stages and exits), kept as ``ditto/<key>``; a client's first round starts it from
the received one. A round trains it first, for as many epochs as the shared step
(``training.local_epochs``) with the shared step's loss over every exit plus the
proximal term to the received weights (``lam``, default 1), then runs the shared step
on the received submodel and sends all of it. The personal step reads only the received
weights, never the trained ones, so its order against the shared step does not matter.
Evaluation: the personal model. The clock charges a second end-to-end training of the
submodel; the proximal term's few FLOPs per parameter are left out, as FedProx's are.
"""

from __future__ import annotations

import torch

from fl_ee.core.config import Config, TrainingConfig
from fl_ee.core.plugins import check_option
from fl_ee.learning.algorithm import ClientAlgorithm, LocalEvaluation, LocalTraining, Losses
from fl_ee.learning.pfl.parts import kept_part, overlay, personal_copy, submodel_training_flops, trains_backbone
from fl_ee.learning.training import proximal_term, train_joint
from fl_ee.models import EarlyExitNet, Flops


def train_ditto(
    personal: EarlyExitNet, received: EarlyExitNet, x: torch.Tensor, y: torch.Tensor, cfg: TrainingConfig,
    epochs: int, generator: torch.Generator, lam: float, augment: bool = False,
) -> float:
    """Train ``personal`` on ``(x, y)`` plus ``(lam / 2) ||personal - received||^2``; the mean loss.

    The loss of ``cfg`` without FedProx's term (``prox_mu`` belongs to the shared step).
    """
    anchors = [p.detach().clone() for p in received.parameters()]
    return train_joint(personal, x, y, cfg.model_copy(update={"prox_mu": 0.0}), generator, epochs, augment,
                       penalty=lambda: proximal_term(personal.parameters(), anchors, lam))


class Ditto(ClientAlgorithm):
    """ditto: a personal submodel with a lambda-proximal term to the received global one (Li et al. 2021)."""

    def __init__(self, cfg: Config, *, lam: float = 1.0) -> None:
        super().__init__(cfg)
        trains_backbone(cfg)
        check_option(isinstance(lam, int | float) and not isinstance(lam, bool) and lam >= 0, "lam",
                     f"must be a number >= 0, got {lam!r}")
        self.lam = float(lam)

    def train(self, local: LocalTraining) -> Losses:
        """The personal step (:func:`train_ditto`), then the shared step."""
        self.personal = personal_copy(local.model, local.state, self.namespace)
        t = local.training
        personal = train_ditto(self.personal, local.model, local.x, local.y, t, t.local_epochs, local.generator,
                               self.lam, self.cfg.data.augment)
        return Losses(local.shared_step(), personal)

    def kept(self, local: LocalTraining) -> dict[str, torch.Tensor]:
        """The personal submodel, ``ditto/<key>``."""
        return kept_part(self.personal, self.namespace)

    def evaluation(self, local: LocalEvaluation) -> tuple[EarlyExitNet, None]:
        """The personal submodel (the received one before the client first trained)."""
        overlay(local.model, local.state, self.namespace)
        return local.model, None

    def train_flops(self, flops: Flops, depth: int, num_train: int, frozen: bool) -> float:
        """The personal step: the submodel trained end to end for ``training.local_epochs``."""
        return submodel_training_flops(flops, depth, num_train, self.cfg.training.local_epochs)
