"""Multi-label decisions: which labels a text gets, from per-label probabilities and thresholds.

A label applies when its probability reaches its threshold. One threshold for all labels (0.5) fails rare labels,
whose probabilities rarely climb that high; each label's threshold is therefore chosen on the validation split to
maximise that label's F1, as the GoEmotions replications do. No torch here.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.metrics import precision_recall_curve

from loratune.schema import SET_SEPARATOR

DEFAULT_THRESHOLD = 0.5
# Kept inside (0, 1) so that a threshold is always a probability the model can reach or miss.
_BOUNDS = (1e-4, 1 - 1e-4)


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Per-label probabilities sigmoid(logits / T), float64."""
    return expit(np.asarray(logits, dtype=np.float64) / temperature)


def tune_thresholds(probs: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """Each label's threshold that maximises its F1 on (probs, y_true); 0.5 for a label with no positives.

    The threshold sits halfway between the lowest probability kept positive and the next lower one, so a
    probability that moves a little (bf16 against fp32) does not flip the decision on the split it was chosen on.
    """
    probs, y_true = np.asarray(probs, dtype=np.float64), np.asarray(y_true) > 0.5
    thresholds = np.full(probs.shape[1], DEFAULT_THRESHOLD)
    for k in range(probs.shape[1]):
        if not y_true[:, k].any():
            continue
        precision, recall, cuts = precision_recall_curve(y_true[:, k], probs[:, k])
        # precision/recall have one entry more than cuts (the final point, recall 0); drop it
        f1 = np.divide(
            2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0
        )
        best = int(np.argmax(f1[:-1]))
        lower = cuts[best - 1] if best > 0 else 0.0
        thresholds[k] = (cuts[best] + lower) / 2
    return np.clip(thresholds, *_BOUNDS)


def decide(probs: np.ndarray, thresholds: np.ndarray | list[float] | None = None) -> np.ndarray:
    """(n, labels) booleans: each label whose probability reaches its threshold (0.5 when none are given)."""
    cut = DEFAULT_THRESHOLD if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    return np.asarray(probs, dtype=np.float64) >= cut


def label_sets(decisions: np.ndarray, labels: list[str]) -> list[str]:
    """Each row's labels as names joined by `schema.SET_SEPARATOR`, in label order ("" for none)."""
    return [SET_SEPARATOR.join(labels[k] for k in np.flatnonzero(row)) for row in np.asarray(decisions, dtype=bool)]
