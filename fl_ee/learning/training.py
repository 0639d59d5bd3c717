"""Local objectives: (weighted) cross-entropy on every exit plus distillation between exits.

Two ways of training share one loss (:func:`exit_loss`): :func:`train_joint` trains
backbone and exits end to end (the shared step under ``training.scheme = e2e``, and
fine-tuning); :func:`train_exits` trains exit heads over the features of a frozen
backbone (the personal step, and the shared step once ``ic-only`` froze the backbone).
Both take FedProx's proximal term where asked. Nothing here knows about Flower.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fl_ee.core.config import TrainingConfig
from fl_ee.learning.augment import crop_and_flip
from fl_ee.models import EarlyExitNet

EVAL_BATCH = 512


def distillation_loss(students: Sequence[torch.Tensor], teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over students of KL(softmax(teacher/T) || softmax(student/T)) * T^2, batch-mean.

    The teacher is used as given; callers pass it detached so it only teaches.
    """
    target = F.softmax(teacher / temperature, dim=1)
    loss = teacher.new_zeros(())
    for student in students:
        log_p = F.log_softmax(student / temperature, dim=1)
        loss = loss + F.kl_div(log_p, target, reduction="batchmean") * temperature**2
    return loss


def mutual_distillation_loss(logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """DepthFL's self-distillation: every exit learns from every other exit's detached output.

    ``sum_i sum_{j != i} KL(softmax(z_j/T) || softmax(z_i/T)) * T^2 / (n - 1)`` for n exits.
    """
    n = len(logits)
    loss = logits[0].new_zeros(())
    for j, teacher in enumerate(logits):
        students = [z for i, z in enumerate(logits) if i != j]
        loss = loss + distillation_loss(students, teacher.detach(), temperature)
    return loss / (n - 1)


def supervised_loss(logits: Sequence[torch.Tensor], targets: torch.Tensor, cfg: TrainingConfig) -> torch.Tensor:
    """Cross-entropy summed over exits, exit i weighted by ``exit_weights[i]`` where weights are set."""
    terms = [F.cross_entropy(z, targets) for z in logits]
    if cfg.exit_weights:  # a client of depth d uses the first d weights
        terms = [w * term for w, term in zip(cfg.exit_weights, terms)]
    return functools.reduce(operator.add, terms)


def exit_loss(logits: Sequence[torch.Tensor], targets: torch.Tensor, cfg: TrainingConfig) -> torch.Tensor:
    """:func:`supervised_loss` plus ``kd_weight`` x the configured distillation."""
    loss = supervised_loss(logits, targets, cfg)
    if len(logits) > 1 and cfg.kd_weight > 0:
        if cfg.distillation == "last-exit":
            loss = loss + cfg.kd_weight * distillation_loss(logits[:-1], logits[-1].detach(), cfg.kd_temperature)
        elif cfg.distillation == "mutual":
            loss = loss + cfg.kd_weight * mutual_distillation_loss(logits, cfg.kd_temperature)
    return loss


def kd_weight_at(cfg: TrainingConfig, server_round: int) -> float:
    """The distillation weight of a round: 0 before ``kd_warmup_rounds`` (ScaleFL), then by ``kd_schedule``.

    ``step``: ``kd_weight`` from then on. ``ramp``: DepthFL's sigmoid ramp-up
    ``kd_weight * exp(-5 (1 - min(r, R)/R)^2)``, with ``r`` the rounds since distillation
    started (0 in its first round, as DepthFL's ``curr_round - 1``) and ``R = kd_ramp_rounds``.
    """
    start = max(cfg.kd_warmup_rounds, 1)
    if server_round < start:
        return 0.0
    if cfg.kd_schedule == "step":
        return cfg.kd_weight
    done = min(server_round - start, cfg.kd_ramp_rounds) / cfg.kd_ramp_rounds
    return cfg.kd_weight * math.exp(-5.0 * (1.0 - done) ** 2)


def for_round(cfg: TrainingConfig, server_round: int) -> TrainingConfig:
    """The training settings of one round: the distillation weight of :func:`kd_weight_at`."""
    weight = kd_weight_at(cfg, server_round)
    return cfg if weight == cfg.kd_weight else cfg.model_copy(update={"kd_weight": weight})


def proximal_term(params: Iterable[torch.Tensor], anchors: Iterable[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's ``(mu / 2) * sum ||w - w_global||^2`` over matching tensors."""
    return mu / 2 * functools.reduce(operator.add, [((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True)])


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches covering ``range(n)`` once."""
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


def fit(
    params: Iterable[torch.Tensor],
    cfg: TrainingConfig,
    epochs: int,
    n: int,
    generator: torch.Generator,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    after_step: Callable[[], None] | None = None,
    max_steps: int | None = None,
) -> float:
    """SGD (``cfg.lr``, ``momentum``, ``weight_decay``) over shuffled batches of ``range(n)``; the mean batch loss.

    ``max_steps`` (``None``: no limit) stops it after that many steps (partial work, :func:`local_steps`).

    With ``cfg.clip_norm > 0`` each step's gradient is first scaled down to that L2 norm
    over all ``params`` where it is longer (``torch.nn.utils.clip_grad_norm_``).
    ``after_step()`` runs after every step, while the gradients of the batch are still
    in place (APFL updates its mixing weight there).
    """
    params = list(params)
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    total, steps = 0.0, 0
    for _ in range(epochs):
        for idx in batches(n, cfg.batch_size, generator):
            if max_steps is not None and steps == max_steps:
                break
            loss = batch_loss(idx)
            opt.zero_grad()
            loss.backward()
            if cfg.clip_norm > 0:
                nn.utils.clip_grad_norm_(params, cfg.clip_norm)
            opt.step()
            if after_step is not None:
                after_step()
            total, steps = total + loss.item(), steps + 1
    return total / max(steps, 1)


def local_steps(n: int, cfg: TrainingConfig, max_steps: int | None = None) -> int:
    """SGD steps of a shared step over ``n`` samples: ``local_epochs x ceil(n / batch_size)``, at most ``max_steps``."""
    steps = cfg.local_epochs * math.ceil(n / cfg.batch_size)
    return steps if max_steps is None else min(steps, max_steps)


def _with_prox(
    module: nn.Module, mu: float, batch_loss: Callable[[torch.Tensor], torch.Tensor],
    penalty: Callable[[], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``batch_loss`` plus FedProx's term to the weights ``module`` holds now (none for ``mu = 0``), and ``penalty()``.

    ``penalty`` (``None``: none) is any further term on the trained tensors, FedDyn's for one.
    """
    anchors = [p.detach().clone() for p in module.parameters()] if mu > 0 else []

    def loss(idx: torch.Tensor) -> torch.Tensor:
        value = batch_loss(idx)
        if mu > 0:
            value = value + proximal_term(module.parameters(), anchors, mu)
        return value if penalty is None else value + penalty()

    return loss


def train_joint(
    model: EarlyExitNet,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainingConfig,
    generator: torch.Generator,
    epochs: int | None = None,
    augment: bool = False,
    penalty: Callable[[], torch.Tensor] | None = None,
    step_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    max_steps: int | None = None,
) -> float:
    """Train every stage and exit of ``model`` for ``epochs`` (default ``cfg.local_epochs``); the mean loss.

    With ``cfg.prox_mu > 0`` the loss includes the proximal term to the weights ``model``
    starts from (the received global ones), and ``penalty()`` where given (FedDyn's term,
    :mod:`fl_ee.learning.feddyn`); with ``augment`` each batch is randomly cropped and
    flipped (:func:`~fl_ee.learning.augment.crop_and_flip`, drawn from ``generator``).
    ``step_loss(inputs, labels)`` replaces a batch's :func:`exit_loss` of the model's exits
    (FjORD's ordered dropout, :mod:`fl_ee.learning.widths`). ``max_steps``: stop after that many (:func:`fit`).
    """
    model.train()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        inputs = crop_and_flip(x[idx], generator) if augment else x[idx]
        return step_loss(inputs, y[idx]) if step_loss else exit_loss(model(inputs), y[idx], cfg)

    loss = _with_prox(model, cfg.prox_mu, batch_loss, penalty)
    return fit(model.parameters(), cfg, cfg.local_epochs if epochs is None else epochs, len(y), generator, loss,
               max_steps=max_steps)


@torch.no_grad()
def stage_features(model: EarlyExitNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Every stage's output for all of ``x``, computed in evaluation batches."""
    model.eval()
    chunks = [model.features(part) for part in x.split(EVAL_BATCH)]
    return [torch.cat(per_stage) for per_stage in zip(*chunks)]


def train_exits(
    heads: nn.ModuleList,
    features: Sequence[torch.Tensor],
    y: torch.Tensor,
    cfg: TrainingConfig,
    epochs: int,
    generator: torch.Generator,
    prox_mu: float = 0.0,
    penalty: Callable[[], torch.Tensor] | None = None,
    max_steps: int | None = None,
) -> float:
    """Train ``heads`` (one per stage) over a frozen backbone's ``features``; returns the mean loss.

    The backbone is fixed, so its features (:func:`stage_features`) are computed once and
    reused every epoch. ``prox_mu > 0`` adds the proximal term to the heads' starting
    weights, and ``penalty()`` is added where given; ``max_steps``: stop after that many (:func:`fit`).
    """
    heads.train()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return exit_loss([head(f[idx]) for head, f in zip(heads, features)], y[idx], cfg)

    return fit(heads.parameters(), cfg, epochs, len(y), generator, _with_prox(heads, prox_mu, batch_loss, penalty),
               max_steps=max_steps)


@torch.no_grad()
def head_logits(heads: Iterable[nn.Module], features: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Each head's logits over its stage's features, in evaluation batches."""
    out = []
    for head, feats in zip(heads, features):
        head.eval()
        out.append(torch.cat([head(f) for f in feats.split(EVAL_BATCH)]))
    return out


@torch.no_grad()
def exit_logits(model: EarlyExitNet, x: torch.Tensor, heads: nn.ModuleList | None = None) -> list[torch.Tensor]:
    """Logits of every exit for all of ``x``; ``heads`` replaces the model's own exits.

    Each evaluation batch goes through the stages and straight on to the heads, so only
    one batch's features are held at a time; the batches, and so the logits, are those
    of :func:`head_logits` over :func:`stage_features`.
    """
    model.eval()
    heads = model.exits if heads is None else heads
    heads.eval()
    per_batch = [[head(f) for head, f in zip(heads, model.features(part))] for part in x.split(EVAL_BATCH)]
    return [torch.cat(logits) for logits in zip(*per_batch)]


def local_loss(model: EarlyExitNet, x: torch.Tensor, y: torch.Tensor, cfg: TrainingConfig) -> float:
    """The local objective (:func:`exit_loss`) of ``model`` over all of ``x``, without training."""
    return float(exit_loss(exit_logits(model, x), y, cfg)) if len(y) else 0.0


def correct(logits: torch.Tensor, y: torch.Tensor) -> int:
    """Rows whose arg-max is the label."""
    return int((logits.argmax(dim=1) == y).sum())


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose arg-max is the label."""
    return correct(logits, y) / len(y) if len(y) else 0.0


def ensemble(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The exits' ensemble: the mean of their softmax outputs (class probabilities)."""
    return torch.stack([F.softmax(z, dim=1) for z in logits]).mean(dim=0)
