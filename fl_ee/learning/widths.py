"""FjORD's ordered dropout: every local step trains a width drawn from those up to the client's own.

Horvath et al., NeurIPS 2021, "FjORD: Fair and Accurate Federated Learning under
heterogeneous targets with Ordered Dropout" (Flower baseline ``baselines/fjord``). A client of
width ratio ``r`` holds the first ``ceil(r x c)`` channels of every layer; under
:class:`OrderedDropout` each step of its shared step draws a width ``p`` uniformly from
``widths`` (the run's tier widths up to ``r``) and trains the first ``ceil(p x c)``
channels of its submodel on that batch (:func:`fl_ee.models.width_forward`: the narrower
network runs on the submodel's own tensors, so the other channels get no gradient). With
``distill`` (FjORD's knowledge distillation), each step also trains the client's own width
with the usual loss, and the drawn width learns from its soft outputs, exit by exit,
instead of from the labels. Nothing here knows about Flower.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fl_ee.core.config import TrainingConfig
from fl_ee.learning.training import exit_loss
from fl_ee.models import EarlyExitNet, width_forward

BatchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, labels) -> the batch's loss


@dataclass(frozen=True)
class OrderedDropout:
    """The widths a client's steps draw from (increasing, its own last), and whether its own width teaches."""

    widths: tuple[float, ...]
    distill: bool = False

    def draw(self, generator: np.random.Generator) -> float:
        """One step's width, uniform over :attr:`widths`."""
        return self.widths[int(generator.integers(len(self.widths)))]

    def forward_flops(self, cost: Callable[[float], float]) -> float:
        """A step's expected forward FLOPs per sample, from ``cost(w)``, the FLOPs of one sample at width ``w``.

        The mean over :attr:`widths`, plus the client's own width's pass where it teaches.
        """
        mean = sum(cost(w) for w in self.widths) / len(self.widths)
        return mean + (cost(self.widths[-1]) if self.distill else 0.0)


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``student``'s logits against the soft targets ``softmax(teacher)``, batch mean (FjORD's KD)."""
    return F.cross_entropy(student, F.softmax(teacher, dim=1))


def ordered_dropout_loss(
    model: EarlyExitNet, plan: OrderedDropout, generator: np.random.Generator, cfg: TrainingConfig
) -> BatchLoss:
    """A batch loss that trains a width drawn by ``generator`` from ``plan`` each call.

    The drawn width's loss is :func:`~fl_ee.learning.training.exit_loss` of its exits. With
    ``plan.distill`` the model's own width adds its ``exit_loss`` and teaches the drawn
    width by :func:`soft_cross_entropy`, exit by exit, in place of the labels.
    """
    forwards = {w: width_forward(model, w) for w in plan.widths}

    def batch_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        drawn = forwards[plan.draw(generator)]
        if not plan.distill:
            return exit_loss(drawn(x), y, cfg)
        teacher = model(x)
        students = drawn(x)
        kd = [soft_cross_entropy(s, t.detach()) for s, t in zip(students, teacher)]
        return exit_loss(teacher, y, cfg) + functools.reduce(operator.add, kd)

    return batch_loss
