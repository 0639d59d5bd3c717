"""Personalisation modes (``personalisation.mode``): what a client makes its own, and how.

* ``exits``: personal exit heads, trained over the frozen received backbone with the
  shared step's loss (:func:`fl_ee.learning.training.exit_loss`) and kept on the client.
* ``self-distill`` (PersEPhonEE): personal heads taught by the received global model's
  deepest exit, whose soft predictions need no labels. Only a seeded share
  ``labelled_fraction`` of the local training samples keeps its label
  (:func:`hide_labels`): labelled samples add cross-entropy, the others learn from the
  teacher alone.
* ``finetune`` (FedBABU, ReeFL): before each evaluation a copy of the whole received
  submodel is trained end to end (:func:`finetuned`); nothing of it is kept or sent.
* ``none``: the global model as received.

Nothing here knows about Flower.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from fl_ee.core.config import Config, TrainingConfig
from fl_ee.core.seeding import Stream, rng
from fl_ee.learning.training import (
    distillation_loss,
    fit,
    for_round,
    head_logits,
    supervised_loss,
    train_exits,
    train_joint,
)
from fl_ee.models import EarlyExitNet

PERSONAL_HEADS = ("exits", "self-distill")  # the modes that train personal heads every round
UNLABELLED = -1  # the target of a sample whose label is hidden


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


def personal_step(
    cfg: Config,
    server_round: int,
    client_id: int,
    heads: nn.ModuleList,
    global_heads: nn.ModuleList,
    features: Sequence[torch.Tensor],
    y: torch.Tensor,
    generator: torch.Generator,
) -> float:
    """Train a client's personal ``heads`` (mode ``exits`` or ``self-distill``) over its frozen ``features``.

    ``global_heads`` are the received exits: the deepest one teaches under ``self-distill``,
    whose distillation weight is ``training.kd_weight`` in every round (the teacher is the
    trained global model, so no warm-up applies).
    """
    mode, epochs = cfg.personalisation.mode, cfg.personalisation.epochs
    if mode == "exits":
        return train_exits(heads, features, y, for_round(cfg.training, server_round), epochs, generator)
    if mode == "self-distill":
        teacher = head_logits(global_heads[-1:], features[-1:])[0]
        targets = hide_labels(y, cfg.personalisation.labelled_fraction, cfg.seed, client_id)
        return train_self_distill(heads, features, teacher, targets, cfg.training, epochs, generator)
    raise ValueError(f"personalisation mode {mode!r} keeps no personal heads")


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
