"""FedRep: heads trained first over a fixed body, then the body under fixed heads.

Collins, Hassani, Mokhtari and Shakkottai, "Exploiting Shared Representations for
Personalized Federated Learning", ICML 2021. Each client first updates its own head for
``tau_h`` epochs with the received representation fixed, then the representation for
its own epochs with the new head fixed, and sends the representation alone; the paper
runs 10 head epochs and 1 body epoch.

On an early-exit submodel: the body (representation) is the backbone stages, shared;
the head is every exit head of the client's submodel, kept on the client as
``fedrep/exits.*`` (a client's first round starts them from the global exits, which
nobody sends, so they keep their initial values). A round lays the kept heads over the
received submodel and

1. trains them for ``head_epochs`` over the received backbone's features (the loss of
   the shared step; the backbone is fixed, so its features are computed once), then
2. runs the shared step with the heads fixed: ``training.local_epochs`` body epochs
   through every exit's loss,

and sends the stages. ``head_epochs`` defaults to the paper's 10, which stays cheap on a
CPU: the heads train over features computed once, so on the Fashion-MNIST preset's CNN
(heads ~4% of the forward FLOPs) the backbone pass and ten head epochs cost about 0.7 of
one body epoch of a full-depth client. The clock charges the
shared step plus one backbone pass and ``3 x heads x head_epochs`` per sample.
Evaluation: the received backbone with the client's heads.
"""

from __future__ import annotations

from fl_ee.core.config import Config
from fl_ee.learning.algorithm import LocalTraining, Losses
from fl_ee.learning.personal import heads_training_flops
from fl_ee.learning.pfl.parts import HEAD, PartlyShared, check_epochs, frozen_params, overlay
from fl_ee.learning.training import train_exits
from fl_ee.models import Flops


class FedRep(PartlyShared):
    """fedrep: personal exit heads trained first, then the shared backbone under them (Collins et al. 2021)."""

    personal = HEAD

    def __init__(self, cfg: Config, *, head_epochs: int = 10) -> None:
        super().__init__(cfg)
        self.head_epochs = check_epochs(head_epochs, "head_epochs")

    def train(self, local: LocalTraining) -> Losses:
        """The head phase over the received backbone, then the body phase (the shared step) under fixed heads."""
        overlay(local.model, local.state, self.namespace)
        head = train_exits(local.model.exits, local.features, local.y, local.training, self.head_epochs,
                           local.generator)
        with frozen_params(local.model.exits):
            body = local.shared_step()
        return Losses(body, head)

    def train_flops(self, flops: Flops, depth: int, num_train: int, frozen: bool) -> float:
        """The head phase: one backbone pass and ``head_epochs`` of the heads (the body phase is the shared step)."""
        return heads_training_flops(flops, depth, num_train, self.head_epochs, frozen)
