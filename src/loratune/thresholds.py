"""Per-label decision thresholds for multi-label runs, chosen on validation with a guard against overfitting.

Each label's own F1-best threshold is what the GoEmotions replications use, but on a rare label it is picked from
a handful of validation positives and lands wherever those few happen to sit: on GoEmotions it went as low as
0.04, so short texts collected seven labels. loratune therefore shrinks each label's threshold toward one shared
threshold (the one that maximises micro-F1 over all labels, chosen on every validation decision at once) in
proportion to how little evidence the label has: a label with n validation positives keeps n / (n + SHRINKAGE) of
its own threshold. `benchmarks/bench_thresholds.py` measured the choices on GoEmotions' validation -> test split;
its command is in `benchmarks/README.md` and its latest figures are quoted in docs/configuration.md.
"""

from __future__ import annotations

import numpy as np

# Validation positives at which a label's own threshold and the shared one weigh the same (measured: see module doc).
SHRINKAGE = 50.0
# A threshold never leaves this range: 0 or 1 would make a label always or never apply.
BOUNDS = (1e-4, 1 - 1e-4)
# The threshold of a label when nothing can be learned (no positives anywhere).
DEFAULT = 0.5


def best_f1_threshold(probs: np.ndarray, y_true: np.ndarray) -> float:
    """The threshold that maximises F1 for one label's probabilities, or DEFAULT without positives.

    It sits halfway between the lowest probability kept positive and the next lower one, so a probability that
    moves a little (bf16 against fp32) does not flip the decision on the split it was chosen on.
    """
    from sklearn.metrics import precision_recall_curve

    probs, y_true = np.asarray(probs, dtype=np.float64).ravel(), np.asarray(y_true, dtype=bool).ravel()
    if not y_true.any():
        return DEFAULT
    precision, recall, cuts = precision_recall_curve(y_true, probs)
    # precision/recall have one entry more than cuts (the final point, recall 0); drop it
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0
    )
    best = int(np.argmax(f1[:-1]))
    lower = cuts[best - 1] if best > 0 else 0.0
    return float((cuts[best] + lower) / 2)


def fit_thresholds(
    probs: np.ndarray, y_true: np.ndarray, shrinkage: float = SHRINKAGE, floor: float = 0.0
) -> np.ndarray:
    """One threshold per label (columns of `probs`), chosen on (probs, y_true).

    `shrinkage` = 0 gives each label its own F1-best threshold; larger values pull labels with few validation
    positives toward the shared micro-F1-best threshold (infinity: the shared one for all). `floor` is a lower
    bound on every threshold (0: none).
    """
    probs, y_true = np.asarray(probs, dtype=np.float64), np.asarray(y_true) > 0.5
    if probs.size == 0:
        return np.full(probs.shape[-1], DEFAULT)
    shared = best_f1_threshold(probs, y_true)  # micro: every (text, label) decision pooled
    positives = y_true.sum(axis=0).astype(np.float64)
    own = np.array([best_f1_threshold(probs[:, k], y_true[:, k]) for k in range(probs.shape[1])])
    if np.isinf(shrinkage):
        weight = np.zeros_like(positives)
    else:
        weight = positives / np.maximum(positives + shrinkage, 1e-12)
    thresholds = weight * own + (1 - weight) * shared
    return np.clip(np.maximum(thresholds, floor), *BOUNDS)
