"""``fl_ee.federation.globaleval``: the global model evaluated in slices side by side gives the whole set's figures."""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from flwr.app import ArrayRecord

from fl_ee.data.datasets import TensorDataset
from fl_ee.federation.globaleval import (
    SLICE_ROWS,
    SliceCounts,
    counts_in_turn,
    evaluate_global,
    global_accuracy,
    slice_threads,
)
from fl_ee.learning.training import EVAL_BATCH, accuracy, ensemble, exit_logits
from fl_ee.models import EarlyExitNet, ModelSpec
from fl_ee.results.summary import collapse_warnings


def _whole_set(model: EarlyExitNet, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The global figures as the server computed them before the slicing: every exit over all of ``x`` at once."""
    logits = exit_logits(model, x)
    return {"by_exit": {str(i + 1): accuracy(z, y) for i, z in enumerate(logits)},
            "ensemble": accuracy(ensemble(logits), y),
            "modal_share": {str(i + 1): z.argmax(1).bincount().max().item() / len(y) for i, z in enumerate(logits)}}


def test_global_accuracy_adds_the_slices_counts_by_hand():
    # exit 1 gives classes (0, 1, 2) to (2, 1, 0) + (0, 0, 2) images: class 0 and class 2 two each, 2 / 5;
    # exit 2 gives class 1 to 3 + 2 images: all five
    counts = [SliceCounts(3, (1, 2), 2, ((2, 1, 0), (0, 3, 0))), SliceCounts(2, (0, 2), 1, ((0, 0, 2), (0, 2, 0)))]
    assert global_accuracy(counts, 5) == {"by_exit": {"1": 0.2, "2": 0.8}, "ensemble": 0.6,
                                          "modal_share": {"1": 0.4, "2": 1.0}}


def test_slices_missing_rows_are_refused_not_averaged_away():
    with pytest.raises(ValueError, match="cover 3 of 5 rows"):
        global_accuracy([SliceCounts(3, (1, 2), 2, ((3, 0), (0, 3)))], 5)
    with pytest.raises(ValueError, match="cover 0 of 5 rows"):
        global_accuracy([], 5)


def _three_slices() -> tuple[EarlyExitNet, EarlyExitNet, TensorDataset]:
    """A model, its depth-3 submodel, and random data of three slices (the last one short)."""
    torch.manual_seed(0)
    spec = ModelSpec(1, 8, 8, 10)
    model = EarlyExitNet(spec)
    rows = 2 * SLICE_ROWS + 300
    x, y = torch.randn(rows, 1, 8, 8), torch.randint(0, 10, (rows,))
    sub = EarlyExitNet(spec, 3)
    sub.load_state_dict({k: v for k, v in model.state_dict().items() if k in sub.state_dict()})
    return model, sub, TensorDataset("random", x[:1], y[:1], x, y, 10)


@pytest.mark.e2e
@pytest.mark.parametrize("threads", [1, 3])
def test_sliced_evaluation_gives_the_whole_sets_figures_whatever_the_threads(threads):
    assert SLICE_ROWS % EVAL_BATCH == 0  # a slice is whole evaluation batches: images meet the same batches
    model, sub, data = _three_slices()
    with ThreadPoolExecutor(threads) as pool:
        result = evaluate_global(ArrayRecord(model.state_dict()), data, model, 3, pool)()
    assert result == _whole_set(sub, data.test_x, data.test_y)
    assert set(result["by_exit"]) == {"1", "2", "3"}
    assert len(set(result["by_exit"].values())) > 1  # the exits differ: not a degenerate case


@pytest.mark.e2e
def test_the_slices_in_turn_on_one_device_give_the_same_figures():
    """A GPU's path (``counts_in_turn``), run on the CPU: the same slices, so the same figures."""
    _, sub, data = _three_slices()
    counts = counts_in_turn(sub, data.test_x, data.test_y)
    assert [c.rows for c in counts] == [SLICE_ROWS, SLICE_ROWS, 300]
    assert global_accuracy(counts, len(data.test_y)) == _whole_set(sub, data.test_x, data.test_y)


@pytest.mark.parametrize(("cores", "torch_threads", "expected"), [(2, 1, 2), (16, 4, 4), (16, 16, 1), (2, 4, 1),
                                                                 (None, 1, 1)])
def test_slices_run_side_by_side_as_the_cores_hold_at_torchs_thread_count(monkeypatch, cores, torch_threads,
                                                                            expected):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    assert slice_threads() == expected


def test_an_exit_behind_dead_units_gives_every_image_one_class_and_the_summary_says_so():
    """What collapsed the deepest global exit under pathological label skew: the last stage's GroupNorm biases
    driven below its normalised inputs, so every ReLU after it outputs 0 and the exit sees a constant."""
    torch.manual_seed(0)
    spec = ModelSpec(1, 8, 8, 10)
    model = EarlyExitNet(spec)
    with torch.no_grad():
        model.stages[-1][1].bias.fill_(-50.0)  # GroupNorm's output is at most ~weight x 8 above its bias here
    x, y = torch.randn(600, 1, 8, 8), torch.arange(600) % 10
    data = TensorDataset("random", x[:1], y[:1], x, y, 10)
    with ThreadPoolExecutor(1) as pool:
        result = evaluate_global(ArrayRecord(model.state_dict()), data, model, len(model.stages), pool)()
    last = str(len(model.stages))
    assert result["modal_share"][last] == 1.0 and result["by_exit"][last] == 0.1  # one class of ten, balanced
    assert all(share < 0.99 for k, share in result["modal_share"].items() if k != last)
    assert collapse_warnings(result) == [
        f"global exit {last} gives one class to 100% of the test images: it has collapsed, so its accuracy (10.0%) "
        "is that of a constant (the units before it died, or it was never trained; see 'A collapsed exit' in the "
        "measured results)"]
