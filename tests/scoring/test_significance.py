"""Bootstrap intervals and McNemar's exact test (loratune.scoring.significance)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

from loratune.scoring.significance import bootstrap_ci, macro_f1, mcnemar_exact
from loratune.task import SINGLE


def test_identical_predictions_are_not_significantly_different():
    rng = np.random.default_rng(0)
    correct = rng.random(500) < 0.8
    only_a, only_b, p = mcnemar_exact(correct, correct.copy())
    assert (only_a, only_b, p) == (0, 0, 1.0)


def test_a_clearly_better_model_is_significant_and_a_coin_flip_apart_is_not():
    rng = np.random.default_rng(1)
    worse = rng.random(1000) < 0.70
    better = worse | (rng.random(1000) < 0.5)  # fixes about half of the mistakes, breaks none
    only_a, only_b, p = mcnemar_exact(worse, better)
    assert only_a == 0 and only_b > 100 and p < 1e-6
    # a handful of swaps either way: same accuracy, no evidence of a difference
    swapped = worse.copy()
    flip = rng.choice(1000, 20, replace=False)
    swapped[flip] = ~swapped[flip]
    assert mcnemar_exact(worse, swapped)[2] > 0.05


def test_vectorised_macro_f1_matches_sklearn_with_missing_classes():
    rng = np.random.default_rng(2)
    y_true, y_pred = rng.integers(0, 3, 200), rng.integers(0, 4, 200)  # class 3 predicted, never true
    expected = f1_score(y_true, y_pred, labels=range(5), average="macro", zero_division=0)
    assert np.isclose(macro_f1(y_true, y_pred, 5), expected)


def test_bootstrap_interval_holds_the_score_and_shrinks_with_more_examples():
    rng = np.random.default_rng(3)

    def interval(n: int, metric: str) -> tuple[float, float, float]:
        y_true = rng.integers(0, 2, n)
        y_pred = np.where(rng.random(n) < 0.8, y_true, 1 - y_true)
        score = float(np.mean(y_true == y_pred)) if metric == "accuracy" else float(macro_f1(y_true, y_pred, 2))
        return (*bootstrap_ci(SINGLE, y_true, y_pred, 2, metric), score)

    for metric in ("accuracy", "f1"):
        low, high, score = interval(200, metric)
        assert low < score < high
        big_low, big_high, big_score = interval(5000, metric)
        assert big_low < big_score < big_high
        assert big_high - big_low < (high - low) / 2  # 25x the data: about 1/5 the width


def test_macro_f1_of_many_resamples_of_many_classes_matches_sklearn_row_by_row():
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 300, size=(4, 250)), rng.integers(0, 300, size=(4, 250))
    y_pred[:, ::3] = y_true[:, ::3]  # some right
    expected = [
        f1_score(t, p, average="macro", labels=range(300), zero_division=0)
        for t, p in zip(y_true, y_pred, strict=True)
    ]
    np.testing.assert_allclose(macro_f1(y_true, y_pred, 300), expected)
