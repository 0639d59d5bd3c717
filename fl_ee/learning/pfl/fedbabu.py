"""FedBABU: the body federated under fixed random heads, the heads tuned only at evaluation.

Oh, Kim and Yun, "FedBABU: Toward Enhanced Representation for Federated Image
Classification", ICLR 2022. During federated training only the body is updated and
aggregated; the head keeps its random initialisation on every client and is never sent.
To evaluate, each client fine-tunes the model on its own data (the whole model in the
paper's main results; the head alone as an ablation), for 5 epochs in Flower's baseline
(``baselines/fedbabu``).

On an early-exit submodel: the body is the backbone stages, trained by the shared step
through every exit's loss with the exit heads (the head) fixed, and sent; the exit heads
are the global model's initial ones (nobody sends them, so the server never moves
them). Before each evaluation a copy is fine-tuned for ``finetune_epochs`` (default 5):
end to end with ``finetune = "full"`` (default), or only its exit heads over the
received backbone's features with ``"head"``; nothing of it is kept or sent. The clock
charges the shared step and the stages' bytes; fine-tuning happens before evaluation,
which it does not time (as for ``finetune``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from torch import nn

from fl_ee.core.config import Config
from fl_ee.core.plugins import check_option
from fl_ee.learning.algorithm import ClientAlgorithm, LocalEvaluation, LocalTraining, Losses
from fl_ee.learning.personal import FINETUNE, tuned_for_evaluation
from fl_ee.learning.pfl.parts import HEAD, check_epochs, frozen_params, trains_backbone, without
from fl_ee.models import EarlyExitNet


class FedBABU(ClientAlgorithm):
    """fedbabu: the backbone federated under fixed initial exit heads, fine-tuned before evaluating (Oh et al. 2022)."""

    def __init__(self, cfg: Config, *, finetune_epochs: int = 5, finetune: str = "full") -> None:
        super().__init__(cfg)
        trains_backbone(cfg)
        check_option(finetune in FINETUNE, "finetune", f"must be one of {', '.join(FINETUNE)}, got {finetune!r}")
        self.finetune_epochs, self.finetune = check_epochs(finetune_epochs, "finetune_epochs"), finetune

    def train(self, local: LocalTraining) -> Losses:
        """The shared step with the exit heads fixed."""
        with frozen_params(local.model.exits):
            return Losses(local.shared_step())

    def sent(self, keys: Sequence[str]) -> Collection[str]:
        """The backbone stages."""
        return without(keys, HEAD)

    def evaluation(self, local: LocalEvaluation) -> tuple[EarlyExitNet, nn.ModuleList | None]:
        """A fine-tuned copy of the submodel or its heads (:func:`~fl_ee.learning.personal.tuned_for_evaluation`)."""
        return tuned_for_evaluation(local, self.finetune, self.finetune_epochs)
