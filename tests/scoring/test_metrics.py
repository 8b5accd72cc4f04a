"""Tests for loratune.scoring.metrics: every score checked against a confusion matrix counted by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from loratune.schema import to_dict
from loratune.scoring.inference import evaluate as _evaluate
from loratune.scoring.metrics import compute_metrics as _compute_metrics
from loratune.task import SINGLE

LABELS = ["cat", "dog", "eel"]
# Ten examples, imbalanced (5 cat, 3 dog, 2 eel), and "eel" is never predicted.
Y_TRUE = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 0, 0, 1, 1, 1, 0, 0, 1])
# Counted by hand, rows = true label, columns = predicted label:
#            cat dog eel
#   cat  [    4,  1,  0 ]   5 cats: 4 right, 1 called dog
#   dog  [    1,  2,  0 ]   3 dogs: 2 right, 1 called cat
#   eel  [    1,  1,  0 ]   2 eels: never right
# Column sums (how often each label was predicted): cat 6, dog 4, eel 0.
MATRIX = [[4, 1, 0], [1, 2, 0], [1, 1, 0]]
PER_CLASS = {
    # precision = diagonal / column sum, recall = diagonal / row sum, f1 = 2pr / (p + r)
    "cat": {"precision": 4 / 6, "recall": 4 / 5, "f1": 8 / 11, "support": 5},  # 2*(2/3)(4/5) / (22/15)
    "dog": {"precision": 2 / 4, "recall": 2 / 3, "f1": 4 / 7, "support": 3},  # 2*(1/2)(2/3) / (7/6)
    "eel": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2},  # never predicted: 0/0 counts as 0
}


def compute_metrics(*args, **kwargs) -> dict:
    """The scores as the run folder stores them (plain JSON-ready data)."""
    return to_dict(_compute_metrics(*args, **kwargs))


def evaluate(*args, **kwargs) -> dict:
    return to_dict(_evaluate(*args, **kwargs))


def test_scores_match_the_hand_counted_confusion_matrix():
    metrics = compute_metrics(Y_TRUE, Y_PRED, LABELS)

    assert metrics["confusion_matrix"] == MATRIX
    assert metrics["num_samples"] == 10
    assert metrics["accuracy"] == pytest.approx(6 / 10)  # the diagonal: 4 + 2 + 0
    assert list(metrics["per_class"]) == LABELS
    for name, expected in PER_CLASS.items():
        assert metrics["per_class"][name] == pytest.approx(expected), name
    assert type(metrics["per_class"]["eel"]["support"]) is int


def test_macro_averages_weigh_every_class_alike():
    metrics = compute_metrics(Y_TRUE, Y_PRED, LABELS)

    # Plain means over the three classes, the never-predicted "eel" included, whatever each class's support.
    assert metrics["precision"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)  # 7/18
    assert metrics["recall"] == pytest.approx((4 / 5 + 2 / 3 + 0) / 3)  # 22/45
    assert metrics["f1"] == pytest.approx((8 / 11 + 4 / 7 + 0) / 3)  # 100/231
    # A support-weighted F1 would be (5 * 8/11 + 3 * 4/7) / 10 = 0.535..., not 100/231 = 0.433...


def test_a_label_absent_from_the_data_still_gets_a_row_and_a_column():
    metrics = compute_metrics(Y_TRUE, Y_PRED, [*LABELS, "fox"])

    assert metrics["confusion_matrix"] == [[4, 1, 0, 0], [1, 2, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    assert metrics["per_class"]["fox"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics["f1"] == pytest.approx((8 / 11 + 4 / 7) / 4)  # four classes now share the mean


def test_every_score_is_a_plain_python_number():
    metrics = compute_metrics(Y_TRUE, Y_PRED, LABELS, loss=np.float32(0.5))
    for key in ("accuracy", "precision", "recall", "f1", "loss"):
        assert type(metrics[key]) is float, key
    assert type(metrics["num_samples"]) is int
    assert all(type(n) is int for row in metrics["confusion_matrix"] for n in row)


def test_loss_is_reported_only_when_given():
    assert compute_metrics(Y_TRUE, Y_PRED, LABELS).get("loss") is None
    assert compute_metrics(Y_TRUE, Y_PRED, LABELS, loss=0.6931)["loss"] == pytest.approx(0.6931)
    assert compute_metrics(Y_TRUE, Y_PRED, LABELS, loss=0.0)["loss"] == 0.0  # a zero loss is still a loss


def test_a_perfect_prediction_scores_one_everywhere():
    metrics = compute_metrics(Y_TRUE, Y_TRUE, LABELS)
    assert metrics["accuracy"] == metrics["precision"] == metrics["recall"] == metrics["f1"] == 1.0
    assert metrics["confusion_matrix"] == [[5, 0, 0], [0, 3, 0], [0, 0, 2]]


class FixedLogits(torch.nn.Module):
    """A 'model' that returns the row of a fixed logits table named by each input id."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids[:, 0]])


def test_evaluate_reports_the_mean_cross_entropy_and_the_argmax_scores():
    # Example 0: logits (ln 2, 0, 0), true cat: p(cat) = 2 / (2 + 1 + 1) = 1/2, so its loss is ln 2.
    # Example 1: logits (0, 0, 0), true eel: p(eel) = 1/3, loss ln 3. Both are predicted cat (a tie goes to the first).
    # Example 2: logits (0, 5, 0), true dog: predicted dog, loss ln(1 + 2e^-5).
    model = FixedLogits([[math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    loader = [
        {"input_ids": torch.tensor([[0], [1]]), "labels": torch.tensor([0, 2])},
        {"input_ids": torch.tensor([[2]]), "labels": torch.tensor([1])},
    ]
    metrics = evaluate(model, loader, LABELS, SINGLE)

    assert metrics["loss"] == pytest.approx((math.log(2) + math.log(3) + math.log(1 + 2 * math.exp(-5))) / 3)
    assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["num_samples"] == 3
