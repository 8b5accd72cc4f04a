"""Significance of a run's scores: bootstrap confidence intervals and McNemar's exact test, on scipy.

No torch and no files: these take label ids (or per-example correctness) as numpy arrays, so the recipe, the
comparison and the tests call them alike.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from loratune.task import Task

CONFIDENCE = 0.95
N_RESAMPLES = 1000


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> np.ndarray:
    """Macro-F1 over the last axis, vectorised so a bootstrap scores all its resamples at once.

    Matches sklearn's `f1_score(average="macro", labels=range(num_labels), zero_division=0)`: a class with no
    true and no predicted example scores 0. Counted with one `bincount` per count over (resample, class) pairs,
    so the cost grows with resamples x (examples + classes), not their product: 5,000 classes stay seconds.
    """
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    lead = t.shape[:-1]
    t, p = t.reshape(-1, t.shape[-1]), p.reshape(-1, p.shape[-1])
    rows = t.shape[0]
    cells = (np.arange(rows, dtype=np.int64) * num_labels)[:, None]
    size = rows * num_labels
    true_n = np.bincount((t + cells).ravel(), minlength=size)
    pred_n = np.bincount((p + cells).ravel(), minlength=size)
    tp = np.bincount((t + cells)[t == p], minlength=size)
    denominator = (true_n + pred_n).reshape(rows, num_labels)
    f1 = np.divide(
        2 * tp.reshape(rows, num_labels), denominator, out=np.zeros((rows, num_labels)), where=denominator > 0
    )
    return f1.mean(axis=-1).reshape(lead)


def bootstrap_ci(
    task: Task, y_true: np.ndarray, y_pred: np.ndarray, num_labels: int, metric: str = "accuracy", seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap confidence interval (`CONFIDENCE`, `N_RESAMPLES` resamples) for accuracy or
    macro-F1, resampling examples: class ids, or for a multi-label task whole label sets ((n, num_labels) 0/1
    rows), so that `accuracy` is subset accuracy and `f1` macro-F1 over labels.

    Percentile rather than BCa: BCa's jackknife scores the metric once per example (slow on a large test split),
    and at a few thousand examples the two agree to a tenth of a point.

    Returns:
        (low, high); both equal to the score itself for fewer than two examples.
    """
    return _INTERVAL_OF_TASK[task.name](np.asarray(y_true), np.asarray(y_pred), num_labels, metric, seed)


def _class_ci(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int, metric: str, seed: int) -> tuple[float, float]:
    def statistic(t: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(t == p, axis=axis) if metric == "accuracy" else macro_f1(t, p, num_labels)

    if len(y_true) < 2:
        value = float(statistic(y_true, y_pred)) if len(y_true) else 0.0
        return value, value
    result = stats.bootstrap(
        (y_true, y_pred),
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=N_RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _label_set_ci(
    y_true: np.ndarray, y_pred: np.ndarray, num_labels: int, metric: str, seed: int
) -> tuple[float, float]:
    # Resampling example indices keeps each example's label set together; per-example counts make a resample's
    # score a few sums, so all resamples are scored at once.
    y_true, y_pred = y_true > 0.5, y_pred > 0.5
    right = (y_true == y_pred).all(axis=1).astype(np.float64)
    counts = np.stack([y_true & y_pred, y_true, y_pred]).astype(np.float64)  # (3, n, labels)

    def statistic(index: np.ndarray, axis: int = -1) -> np.ndarray:
        if metric == "accuracy":
            return right[index].mean(axis=-1)
        tp, true, pred = (c[index].sum(axis=-2) for c in counts)
        f1 = np.divide(2 * tp, true + pred, out=np.zeros_like(tp), where=true + pred > 0)
        return f1.mean(axis=-1)

    index = np.arange(len(y_true))
    if len(index) < 2:
        value = float(statistic(index)) if len(index) else 0.0
        return value, value
    result = stats.bootstrap(
        (index,),
        statistic,
        vectorized=True,
        n_resamples=N_RESAMPLES,
        batch=100,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


# How an example is resampled: one class per text, or a whole label set.
_INTERVAL_OF_TASK = {"single": _class_ci, "multi": _label_set_ci}


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test of two classifiers scored on the same examples.

    Only the discordant examples count: under the null hypothesis each is equally likely to favour either model,
    so the test is a two-sided binomial test of `only_b` successes in `only_a + only_b` trials at p = 0.5.

    Args:
        correct_a: per-example correctness (bool) of model A.
        correct_b: the same examples, scored by model B.

    Returns:
        (only_a, only_b, p_value): examples only A got right, only B got right, and the two-sided p-value
        (1.0 when the two never disagree).
    """
    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    assert correct_a.shape == correct_b.shape, "McNemar pairs the same examples"
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    if only_a + only_b == 0:
        return only_a, only_b, 1.0
    return only_a, only_b, float(stats.binomtest(only_b, only_a + only_b, 0.5).pvalue)
