"""Predictions -> metrics: accuracy, macro precision / recall / F1, per-class scores, confusion matrix; for
multi-label tasks subset accuracy, micro / macro / samples averages and Hamming loss."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    hamming_loss,
    precision_recall_fscore_support,
)

from loratune.schema import DETAILED_LABELS, ClassScores, Metrics
from loratune.task import Task


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], loss: float | None = None) -> Metrics:
    """Scores of predicted label ids against true ones; macro averages weigh every class alike.

    Returns:
        accuracy, precision, recall, f1 (macro), per-class scores, the confusion matrix (rows = true,
        columns = predicted; [] past `DETAILED_LABELS` labels), the number of samples, and the loss when given.
    """
    ids = list(range(len(labels)))
    matrix = confusion_matrix(y_true, y_pred, labels=ids).tolist() if len(ids) <= DETAILED_LABELS else []
    return Metrics(
        accuracy=float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        **_by_class(
            labels, precision_recall_fscore_support(y_true, y_pred, labels=ids, average=None, zero_division=0)
        ),
        confusion_matrix=matrix,
        num_samples=int(len(y_true)),
        loss=None if loss is None else float(loss),
        # over the classes the split has (sklearn's definition): a class absent from it has no recall to average
        balanced_accuracy=_balanced_accuracy(y_true, y_pred),
    )


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if not len(y_true):
        return 0.0
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": expected whenever a split lacks a class the model predicts, and
        # the definition above already accounts for it.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true", category=UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def _by_class(labels: list[str], scores: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """Macro precision / recall / F1 and the per-class scores, from sklearn's per-class arrays."""
    precision, recall, f1, support = scores
    per_class = {
        name: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(labels)
    }
    means = {"precision": np.mean(precision), "recall": np.mean(recall), "f1": np.mean(f1)}
    return {k: float(v) for k, v in means.items()} | {"per_class": per_class}


def compute_multilabel_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], loss: float | None = None
) -> Metrics:
    """Scores of predicted label sets against true ones, both (n, num_labels) 0/1 arrays.

    Returns:
        subset accuracy (`accuracy`: the whole set right), macro precision/recall/F1, per-label scores (support =
        positives), micro and samples averages, Hamming loss (the share of wrong label decisions), no confusion
        matrix.
    """
    y_true, y_pred = np.asarray(y_true) > 0.5, np.asarray(y_pred, dtype=bool)
    scores = {
        average: precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        for average in ("micro", "samples")
    }
    empty = len(y_true) == 0
    return Metrics(
        accuracy=0.0 if empty else float(accuracy_score(y_true, y_pred)),
        **_by_class(labels, precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)),
        confusion_matrix=[],
        num_samples=int(len(y_true)),
        loss=None if loss is None else float(loss),
        micro_precision=float(scores["micro"][0]),
        micro_recall=float(scores["micro"][1]),
        micro_f1=float(scores["micro"][2]),
        samples_precision=0.0 if empty else float(scores["samples"][0]),
        samples_recall=0.0 if empty else float(scores["samples"][1]),
        samples_f1=0.0 if empty else float(scores["samples"][2]),
        hamming_loss=0.0 if empty else float(hamming_loss(y_true, y_pred)),
    )


def metrics_from_logits(
    logits: np.ndarray,
    y_true: np.ndarray,
    labels: list[str],
    task: Task,
    temperature: float = 1.0,
    thresholds: np.ndarray | list[float] | None = None,
) -> Metrics:
    """Metrics and mean loss (the task's unweighted loss) of (n, num_labels) logits against the true labels, with
    the task's decision: the most probable class, or each label whose probability of logits / `temperature`
    reaches its threshold (0.5 when None)."""
    predicted = task.decide(task.probabilities(logits, temperature), thresholds)
    compute = _METRICS_OF_TASK[task.name]
    return compute(y_true, predicted, labels, loss=_exact_mean(task.elementwise_loss(logits, y_true)))


# Which metrics apply to a task: one label per text, or a set per text.
_METRICS_OF_TASK = {"single": compute_metrics, "multi": compute_multilabel_metrics}


def _exact_mean(losses: torch.Tensor) -> float:
    """The mean of every element, summed exactly (`math.fsum`): the same whatever order the texts came in, so a
    run's "after" loss (texts in the dataset's order) and `loratune evaluate`'s (in batch order) agree to the last
    digit. torch's mean sums in float32 in whatever order it is given, which moved the last digit."""
    values = losses.double().flatten().tolist()
    return math.fsum(values) / len(values)
