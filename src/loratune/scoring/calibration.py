"""Confidence you can trust: expected calibration error, reliability bins, and temperature scaling.

Temperature scaling (Guo et al., 2017, https://arxiv.org/abs/1706.04599) divides the logits by one scalar T fitted
on the validation split to minimise the negative log-likelihood. T > 0 keeps every row's argmax, so labels and
accuracy never change; only how sure the model says it is. No torch and no files here.

What counts as one prediction, and as right, is the task's (`Task.confidence`): the top label of a single-label
text, or every (text, label) probability of a multi-label one, right when that label is true. One T for all
labels; a multi-label run's thresholds are then chosen on the calibrated probabilities, so decisions stay what
validation chose.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from loratune.task import Task

N_BINS = 15
# T is searched in this range: wide enough for any sane model, and bounded so the optimiser cannot run off on a
# validation split the model already gets 100% right. A saved temperature outside it is refused (`runs.files`).
TEMPERATURES = (0.05, 20.0)
_LOG_T_BOUNDS = (np.log(TEMPERATURES[0]), np.log(TEMPERATURES[1]))


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, task: Task, n_bins: int = N_BINS) -> float:
    """ECE of the top-label confidence: the mean |accuracy - confidence| over equal-width confidence bins,
    weighted by the share of examples in each bin.

    Args:
        probs: (n, num_labels) probabilities.
        y_true: the true labels, as the task holds them.
        task: what counts as a prediction and as right.
    """
    bins = reliability_bins(probs, y_true, task, n_bins)
    total = sum(b["count"] for b in bins)
    if not total:
        return 0.0
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / total)


def reliability_bins(
    probs: np.ndarray, y_true: np.ndarray, task: Task, n_bins: int = N_BINS
) -> list[dict[str, float]]:
    """The non-empty confidence bins: lower and upper edge, predictions, mean confidence and accuracy in each."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.size == 0:
        return []
    confidence, correct = task.confidence(probs, y_true)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edges[i], edges[i + 1]] (the first bin also 0, which only a multi-label probability can be).
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        members = index == i
        if members.any():
            bins.append(
                {
                    "low": float(edges[i]),
                    "high": float(edges[i + 1]),
                    "count": int(members.sum()),
                    "confidence": float(confidence[members].mean()),
                    "accuracy": float(correct[members].mean()),
                }
            )
    return bins


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, task: Task) -> float:
    """The temperature that minimises the negative log-likelihood of `logits` (bounded Brent search on log T).

    Returns:
        T > 0; 1.0 when there is nothing to fit on.
    """
    logits, y_true = np.asarray(logits, dtype=np.float64), np.asarray(y_true)
    if len(y_true) == 0:
        return 1.0
    result = minimize_scalar(
        lambda log_t: task.negative_log_likelihood(logits, y_true, float(np.exp(log_t))),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
    )
    return float(np.clip(np.exp(result.x), *TEMPERATURES))  # exp(log T) may land a hair outside the bounds
