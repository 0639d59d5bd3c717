"""The shipped personalisation modes (``personalisation.mode``), as client algorithms (:mod:`fl_ee.learning.algorithm`).

* ``exits`` (:class:`Exits`): personal exit heads, trained over the frozen received
  backbone with the shared step's loss (:func:`fl_ee.learning.training.exit_loss`) before
  the shared step, and kept on the client as ``exits/<key>``.
* ``self-distill`` (:class:`SelfDistill`, PersEPhonEE): personal heads taught by the
  received global model's deepest exit, whose soft predictions need no labels. Only a
  seeded share ``labelled_fraction`` of the local training samples keeps its label
  (:func:`hide_labels`): labelled samples add cross-entropy, the others learn from the
  teacher alone.
* ``finetune`` (:class:`Finetune`, FedBABU, ReeFL): before each evaluation a copy of the
  whole received submodel is trained end to end (:func:`finetuned`), or with the option
  ``finetune = "head"`` a copy of its exit heads over the received backbone
  (:func:`tuned_for_evaluation`); nothing of it is kept or sent.
* ``none``: the global model as received (:class:`~fl_ee.learning.algorithm.ClientAlgorithm` itself).

The personal step and the fine-tuning train at ``personalisation.lr`` where it is above 0
(:func:`personal_training`), else at the round's lr: under a schedule that decays to 0,
the last rounds' personal steps would otherwise barely move the heads.

Nothing here knows about Flower.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fl_ee.core.config import Config, TrainingConfig
from fl_ee.core.plugins import check_option
from fl_ee.core.seeding import Stream, rng
from fl_ee.learning.algorithm import ClientAlgorithm, LocalEvaluation, LocalTraining, Losses
from fl_ee.learning.training import (
    distillation_loss,
    fit,
    head_logits,
    stage_features,
    supervised_loss,
    train_exits,
    train_joint,
)
from fl_ee.models import EarlyExitNet, Flops, training_flops

UNLABELLED = -1  # the target of a sample whose label is hidden
FINETUNE = ("full", "head")  # what fine-tuning before evaluation trains: the whole submodel, or its exit heads


def personal_training(cfg: Config, training: TrainingConfig) -> TrainingConfig:
    """The personal step's and fine-tuning's config: the round's ``training``, at ``personalisation.lr`` if above 0."""
    lr = cfg.personalisation.lr
    return training.model_copy(update={"lr": lr}) if lr else training


def hide_labels(y: torch.Tensor, fraction: float, seed: int, client_id: int) -> torch.Tensor:
    """``y`` with all but ``round(fraction * n)`` samples, drawn by seed and client, set to :data:`UNLABELLED`.

    Only the kept samples' labels are read; the same client keeps the same ones every round.
    """
    keep = torch.from_numpy(rng(seed, Stream.LABELS, client_id).permutation(len(y))[: round(fraction * len(y))])
    targets = torch.full_like(y, UNLABELLED)
    targets[keep] = y[keep]
    return targets


def train_self_distill(
    heads: nn.ModuleList,
    features: Sequence[torch.Tensor],
    teacher: torch.Tensor,
    targets: torch.Tensor,
    cfg: TrainingConfig,
    epochs: int,
    generator: torch.Generator,
) -> float:
    """Train ``heads`` over frozen ``features`` from the ``teacher``'s logits; returns the mean loss.

    Per batch: ``kd_weight x`` :func:`~fl_ee.learning.training.distillation_loss` of every head
    from the teacher at ``kd_temperature``, plus :func:`~fl_ee.learning.training.supervised_loss`
    over the samples whose target is not :data:`UNLABELLED`.
    """
    heads.train()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        logits = [head(f[idx]) for head, f in zip(heads, features)]
        loss = cfg.kd_weight * distillation_loss(logits, teacher[idx], cfg.kd_temperature)
        known = targets[idx] != UNLABELLED
        if known.any():
            loss = loss + supervised_loss([z[known] for z in logits], targets[idx][known], cfg)
        return loss

    return fit(heads.parameters(), cfg, epochs, len(targets), generator, batch_loss)


def finetuned(
    model: EarlyExitNet, x: torch.Tensor, y: torch.Tensor, cfg: TrainingConfig, epochs: int,
    generator: torch.Generator,
) -> EarlyExitNet:
    """A copy of ``model`` trained end to end on ``(x, y)`` for ``epochs`` with the loss of ``cfg``.

    No proximal term: the copy is the client's own. ``model`` itself is left as it is.
    """
    tuned = copy.deepcopy(model)
    train_joint(tuned, x, y, cfg.model_copy(update={"prox_mu": 0.0}), generator, epochs)
    return tuned


def tuned_for_evaluation(
    local: LocalEvaluation, finetune: str, epochs: int
) -> tuple[EarlyExitNet, nn.ModuleList | None]:
    """What a fine-tuning client evaluates, a copy trained on its data; nothing of it is kept.

    ``finetune = "full"``: a :func:`finetuned` copy of the received submodel; ``"head"``:
    the received submodel with a copy of its exit heads trained over its backbone's features.
    Trained for ``epochs`` at :func:`personal_training`'s lr, from the evaluation's generator.
    """
    training = personal_training(local.cfg, local.training)
    if finetune == "full":
        return finetuned(local.model, local.x_train, local.y_train, training, epochs, local.generator), None
    heads = copy.deepcopy(local.model.exits)
    train_exits(heads, stage_features(local.model, local.x_train), local.y_train, training, epochs, local.generator)
    return local.model, heads


def personal_heads(model: EarlyExitNet, state: Mapping[str, torch.Tensor]) -> nn.ModuleList:
    """The client's own exit heads: its kept ``exits/<key>`` arrays, else a copy of the received exits."""
    heads = copy.deepcopy(model.exits)
    saved = {key.removeprefix(f"{Exits.namespace}/"): value for key, value in state.items()
             if key.startswith(f"{Exits.namespace}/")}
    if saved:
        heads.load_state_dict(saved)
    return heads


def heads_training_flops(flops: Flops, depth: int, num_train: int, epochs: int, frozen: bool) -> float:
    """Training a depth-``depth`` client's heads over the backbone's features for ``epochs``.

    One backbone pass over the samples (none when a frozen shared step made it already),
    then ``3 x heads`` per sample and epoch.
    """
    backbone, heads = sum(flops.stages[:depth]), sum(flops.exits[:depth])
    return (0 if frozen else backbone * num_train) + training_flops(heads, num_train, epochs)


class Exits(ClientAlgorithm):
    """exits: personal exit heads over the frozen received backbone, trained with the shared step's loss."""

    namespace = "exits"

    def train(self, local: LocalTraining) -> Losses:
        """The personal step on the client's heads, then the shared step."""
        self.heads = personal_heads(local.model, local.state)
        personal = self.personal_step(local, self.heads)
        return Losses(local.shared_step(), personal)

    def personal_step(self, local: LocalTraining, heads: nn.ModuleList) -> float:
        """Train ``heads`` over the received backbone's features for ``personalisation.epochs``; the mean loss."""
        return train_exits(heads, local.features, local.y, personal_training(self.cfg, local.training),
                           self.cfg.personalisation.epochs, local.generator)

    def kept(self, local: LocalTraining) -> dict[str, torch.Tensor]:
        """The personal heads, as ``exits/<key>``."""
        return {f"{self.namespace}/{key}": value for key, value in self.heads.state_dict().items()}

    def evaluation(self, local: LocalEvaluation) -> tuple[EarlyExitNet, nn.ModuleList]:
        """The received submodel with the personal heads."""
        return local.model, personal_heads(local.model, local.state)

    def train_flops(self, flops: Flops, depth: int, num_train: int, frozen: bool) -> float:
        """:func:`heads_training_flops` of ``personalisation.epochs``."""
        return heads_training_flops(flops, depth, num_train, self.cfg.personalisation.epochs, frozen)


class SelfDistill(Exits):
    """self-distill: personal heads taught by the received deepest exit; labelled_fraction of labels (PersEPhonEE)."""

    namespace = "exits"

    def personal_step(self, local: LocalTraining, heads: nn.ModuleList) -> float:
        """Train ``heads`` from the received deepest exit's logits, and the labels kept (:func:`hide_labels`).

        The distillation weight is ``training.kd_weight`` in every round (the teacher is
        the trained global model, so no warm-up applies).
        """
        cfg = self.cfg
        teacher = head_logits(local.model.exits[-1:], local.features[-1:])[0]
        targets = hide_labels(local.y, cfg.personalisation.labelled_fraction, cfg.seed, local.client_id)
        return train_self_distill(heads, local.features, teacher, targets, personal_training(cfg, local.training),
                                  cfg.personalisation.epochs, local.generator)

    def train_flops(self, flops: Flops, depth: int, num_train: int, frozen: bool) -> float:
        """As :class:`Exits`, plus the teacher head's forward pass over the samples."""
        return super().train_flops(flops, depth, num_train, frozen) + flops.exits[depth - 1] * num_train


class Finetune(ClientAlgorithm):
    """finetune: a copy of the received submodel (or of its exit heads) trained before each evaluation (FedBABU, ReeFL).

    Option ``finetune``: ``"full"`` (default) trains the whole copy end to end, ``"head"``
    only the exit heads over the received backbone (FedBABU's head fine-tuning).
    """

    def __init__(self, cfg: Config, *, finetune: str = "full") -> None:
        super().__init__(cfg)
        check_option(finetune in FINETUNE, "finetune", f"must be one of {', '.join(FINETUNE)}, got {finetune!r}")
        self.finetune = finetune

    def evaluation(self, local: LocalEvaluation) -> tuple[EarlyExitNet, nn.ModuleList | None]:
        """:func:`tuned_for_evaluation` for ``personalisation.epochs``; nothing kept."""
        return tuned_for_evaluation(local, self.finetune, self.cfg.personalisation.epochs)
