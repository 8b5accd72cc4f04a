"""Predictions -> metrics: accuracy, macro precision / recall / F1, per-class scores, confusion matrix; for
multi-label tasks subset accuracy, micro / macro / samples averages and Hamming loss."""

from __future__ import annotations

import math
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

from loratune.model.hardware import attention_kernels, autocast
from loratune.runs.integrity import check_finite_logits
from loratune.schema import ClassScores, Metrics
from loratune.scoring import thresholding


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], loss: float | None = None) -> Metrics:
    """Scores of predicted label ids against true ones; macro averages weigh every class alike.

    Returns:
        accuracy, precision, recall, f1 (macro), per-class scores, the confusion matrix (rows = true,
        columns = predicted), the number of samples, and the loss when given.
    """
    ids = list(range(len(labels)))
    return Metrics(
        accuracy=float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        **_by_class(
            labels, precision_recall_fscore_support(y_true, y_pred, labels=ids, average=None, zero_division=0)
        ),
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        num_samples=int(len(y_true)),
        loss=None if loss is None else float(loss),
        # over the classes the split has (sklearn's definition): a class absent from it has no recall to average
        balanced_accuracy=float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
    )


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


def predict_logits(
    model: torch.nn.Module, loader: Any, accelerator: Any = None, precision: str = "fp32"
) -> tuple[np.ndarray, np.ndarray]:
    """Run the model over a loader under inference mode; returns (logits, labels) in the loader's order.

    With an Accelerate `accelerator`, each process scores its shard and the results are gathered. `precision`
    is the autocast of training (a model prepared for inference holds its own dtype and needs none).
    """
    model.eval()
    all_logits, all_labels = [], []
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    with torch.inference_mode(), autocast(precision, device.type), attention_kernels(device.type):
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            labels = batch.pop("labels", None)
            logits = model(**batch).logits.float()
            if accelerator is not None:
                logits, labels = accelerator.gather_for_metrics((logits, labels))
            all_logits.append(logits)  # kept on the device until the end: copying each batch would wait for it
            if labels is not None:
                all_labels.append(labels)
    # Several processes: Accelerate evens out their batches by repeating examples at the end, and drops the repeats
    # when gathering only where it knows the batch size, which a batch sampler (`batching.eval_batches`) does not
    # tell it; so the repeats are cut here (the gathered batches keep the loader's order, repeats last).
    n = len(loader.dataset) if hasattr(loader, "dataset") else None
    logits = torch.cat(all_logits)[:n].cpu().numpy() if all_logits else np.zeros((0, 0))
    check_finite_logits(logits)  # argmax of NaN is label 0: a silent, wrong score
    labels = torch.cat(all_labels)[:n].cpu().numpy() if all_labels else np.zeros((0,), dtype=int)
    return logits, labels


def evaluate(
    model: torch.nn.Module, loader: Any, labels: list[str], accelerator: Any = None, precision: str = "fp32"
) -> Metrics:
    """Metrics (and mean loss) of `model` on every example of `loader`; the validation score of each epoch.

    Multi-label: each label's threshold is tuned on these very examples (as the run's final thresholds are on
    validation), so an epoch is judged by the F1 its probabilities can reach, not by how near 0.5 they happen to be.
    """
    logits, y_true = predict_logits(model, loader, accelerator, precision)
    thresholds = None
    if y_true.ndim == 2:
        thresholds = thresholding.tune_thresholds(thresholding.probabilities(logits), y_true)
    return metrics_from_logits(logits, y_true, labels, thresholds=thresholds)


def metrics_from_logits(
    logits: np.ndarray,
    y_true: np.ndarray,
    labels: list[str],
    temperature: float = 1.0,
    thresholds: np.ndarray | list[float] | None = None,
) -> Metrics:
    """Metrics and mean loss (unweighted cross-entropy, or binary cross-entropy per label) of (n, num_labels)
    logits against label ids, or against multi-hot rows for a multi-label task. Multi-label decisions are
    sigmoid(logits / `temperature`) >= `thresholds` (0.5 when None); single-label ones the argmax."""
    if y_true.ndim == 2:
        losses = torch.nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(logits).float(), torch.from_numpy(y_true).float(), reduction="none"
        )
        predicted = thresholding.decide(thresholding.probabilities(logits, temperature), thresholds)
        return compute_multilabel_metrics(y_true, predicted, labels, loss=_exact_mean(losses))
    losses = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y_true), reduction="none")
    return compute_metrics(y_true, logits.argmax(-1), labels, loss=_exact_mean(losses))


def _exact_mean(losses: torch.Tensor) -> float:
    """The mean of every element, summed exactly (`math.fsum`): the same whatever order the texts came in, so a
    run's "after" loss (texts in the dataset's order) and `loratune evaluate`'s (in batch order) agree to the last
    digit. torch's mean sums in float32 in whatever order it is given, which moved the last digit."""
    values = losses.double().flatten().tolist()
    return math.fsum(values) / len(values)
