"""The global model's evaluation on the global test set, in slices evaluated side by side.

The server evaluates the global model while the clients evaluate
(:func:`fl_ee.federation.server.run_federation`); one thread for the whole test set would leave
cores idle once the clients are done, so :func:`evaluate_global` hands each
:data:`SLICE_ROWS` rows to one of :func:`slice_threads` threads (torch runs them
without the GIL), and :func:`global_accuracy` adds their counts up. A slice is a whole number of evaluation
batches (:data:`fl_ee.learning.training.EVAL_BATCH`), so every image goes through the network in
the batch it would meet if the whole set were evaluated at once: the figures do not
depend on the slicing or on the threads. A server with a GPU (``simulation.client_gpus > 0``
and CUDA there) evaluates the slices one after the other on it instead, in one thread.

Beside accuracy, each exit's ``modal_share`` is the share of test images given its most
frequent class: about 1/classes for a healthy exit on a balanced test set, 1.0 for an exit
that gives every image one class, which :func:`fl_ee.results.summary.collapse_warnings`
reports (the deepest stage's units dead under pathological label skew, for instance).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord

from fl_ee.data.datasets import TensorDataset
from fl_ee.learning.training import EVAL_BATCH, correct, ensemble, exit_logits
from fl_ee.models import EarlyExitNet, build_model, narrow_state, submodel_shapes
from fl_ee.wire.arrays import torch_state

SLICE_ROWS = 4 * EVAL_BATCH
CPU = torch.device("cpu")


@dataclass(frozen=True)
class SliceCounts:
    """The global model on some rows of the test set.

    How many rows, how many each exit and their ensemble got right, and how many each exit gave each class.
    """

    rows: int
    exit_correct: tuple[int, ...]
    ensemble_correct: int
    exit_predicted: tuple[tuple[int, ...], ...]


def slice_counts(model: EarlyExitNet, x: torch.Tensor, y: torch.Tensor) -> SliceCounts:
    """How many of ``x`` each exit of ``model`` (on any device), and the exits' ensemble, classify as ``y``."""
    device = next(model.parameters()).device
    logits = [z.cpu() for z in exit_logits(model, x.to(device))]
    predicted = tuple(tuple(torch.bincount(z.argmax(dim=1), minlength=z.shape[1]).tolist()) for z in logits)
    return SliceCounts(len(y), tuple(correct(z, y) for z in logits), correct(ensemble(logits), y), predicted)


def global_accuracy(counts: Sequence[SliceCounts], rows: int) -> dict[str, Any]:
    """Accuracy over ``rows`` images from their slices' counts.

    ``by_exit`` (exits 1..depth), their ``ensemble``, and each exit's ``modal_share`` (the
    share of the images given its most frequent class).
    """
    if sum(c.rows for c in counts) != rows or not counts:
        raise ValueError(f"the slices cover {sum(c.rows for c in counts)} of {rows} rows")
    exits = range(len(counts[0].exit_correct))
    modal = [max(map(sum, zip(*(c.exit_predicted[i] for c in counts)))) for i in exits]
    return {"by_exit": {str(i + 1): sum(c.exit_correct[i] for c in counts) / rows for i in exits},
            "ensemble": sum(c.ensemble_correct for c in counts) / rows,
            "modal_share": {str(i + 1): modal[i] / rows for i in exits}}


def slice_threads() -> int:
    """Slices to evaluate at once: as many as the cores hold at torch's thread count (one each under ``fl-ee run``)."""
    return max(1, (os.cpu_count() or 1) // torch.get_num_threads())


def slices(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``x`` and ``y`` cut into slices of :data:`SLICE_ROWS` rows (the last one shorter)."""
    return [(x[s:s + SLICE_ROWS], y[s:s + SLICE_ROWS]) for s in range(0, len(y), SLICE_ROWS)]


def counts_in_turn(model: EarlyExitNet, x: torch.Tensor, y: torch.Tensor) -> list[SliceCounts]:
    """:func:`slice_counts` of each slice of ``x`` in turn: one device evaluating them all."""
    return [slice_counts(model, xs, ys) for xs, ys in slices(x, y)]


def evaluate_global(
    arrays: ArrayRecord, data: TensorDataset, model: EarlyExitNet, depth: int, threads: Executor, width: float = 1.0,
    device: torch.device = CPU,
) -> Callable[[], dict[str, Any]]:
    """Start evaluating the global ``arrays`` (exits 1..``depth``, at width ``width``) on ``data``'s test set.

    On the CPU each slice of the test set is a task; on a GPU (``device``) one task evaluates
    them in turn there. Returns a function that waits for ``threads`` to run them and gives their
    :func:`global_accuracy`. The run evaluates the submodel of its deepest and widest tiers
    (channels no tier holds are never trained).
    """
    sub = build_model(model.spec, depth, width)
    sub.load_state_dict(narrow_state(torch_state(arrays), submodel_shapes(model.spec, depth, width)))
    x, y = data.test_x, data.test_y
    if device.type != "cpu":
        on_device = threads.submit(counts_in_turn, sub.to(device), x, y)
        return lambda: global_accuracy(on_device.result(), len(y))
    parts = [threads.submit(slice_counts, sub, xs, ys) for xs, ys in slices(x, y)]
    return lambda: global_accuracy([p.result() for p in parts], len(y))
