"""Multi-label thresholds: each label's F1-best, shrunk toward a shared one by how little evidence the label has."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from loratune.task import MULTI
from loratune.thresholds import DEFAULT, best_f1_threshold, fit_thresholds


def _draw(rng, n, rates, separation=2.0):
    """Gold label sets at `rates` and probabilities that rank them imperfectly (positives higher on average)."""
    gold = rng.random((n, len(rates))) < rates
    logits = separation * gold - 3.0 + rng.normal(0, 1.2, gold.shape)
    return 1 / (1 + np.exp(-logits)), gold


def test_without_shrinkage_each_label_gets_its_own_f1_best_threshold():
    probs, gold = _draw(np.random.default_rng(0), 400, np.array([0.4, 0.1, 0.02]))
    own = fit_thresholds(probs, gold, shrinkage=0.0)
    for k in range(3):
        best = max(f1_score(gold[:, k], probs[:, k] >= t, zero_division=0) for t in np.unique(probs[:, k]))
        assert f1_score(gold[:, k], probs[:, k] >= own[k]) == pytest.approx(best, abs=1e-9)


def test_a_rare_label_is_pulled_toward_the_shared_threshold_and_a_common_one_keeps_its_own():
    probs, gold = _draw(np.random.default_rng(1), 2000, np.array([0.3, 0.003]))
    own, shared = fit_thresholds(probs, gold, shrinkage=0.0), best_f1_threshold(probs, gold)
    shrunk = fit_thresholds(probs, gold, shrinkage=50.0)
    n = gold.sum(axis=0)
    assert n[0] > 500 and n[1] < 15
    assert abs(shrunk[0] - own[0]) < 0.1 * abs(own[0] - shared) + 1e-9  # hundreds of positives: its own
    expected = (n[1] * own[1] + 50 * shared) / (n[1] + 50)
    assert shrunk[1] == pytest.approx(expected)
    assert abs(shrunk[1] - shared) < abs(own[1] - shared)


def test_a_label_without_positives_gets_the_shared_threshold_and_nothing_at_all_gets_the_default():
    probs, gold = _draw(np.random.default_rng(2), 300, np.array([0.3, 0.0]))
    assert fit_thresholds(probs, gold)[1] == pytest.approx(best_f1_threshold(probs, gold))
    assert (fit_thresholds(probs, np.zeros_like(gold)) == DEFAULT).all()
    assert fit_thresholds(np.zeros((0, 3)), np.zeros((0, 3))).shape == (3,)


def test_shrinking_generalises_better_than_each_rare_labels_own_threshold():
    # Twenty rare labels (a handful of validation positives each, as GoEmotions' grief or pride): thresholds
    # chosen on one draw, judged on another of the same distribution.
    rates = np.full(20, 0.01)
    own_f1, shrunk_f1 = [], []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        val, test = _draw(rng, 800, rates), _draw(rng, 800, rates)
        for shrinkage, out in ((0.0, own_f1), (50.0, shrunk_f1)):
            thresholds = fit_thresholds(*val, shrinkage=shrinkage)
            out.append(f1_score(test[1], test[0] >= thresholds, average="macro", zero_division=0))
    assert np.mean(shrunk_f1) > np.mean(own_f1)


def test_the_multi_label_task_shrinks_by_default():
    probs, gold = _draw(np.random.default_rng(3), 500, np.array([0.3, 0.01]))
    assert np.allclose(MULTI.fit_thresholds(probs, gold), fit_thresholds(probs, gold, shrinkage=50.0))
    assert not np.allclose(MULTI.fit_thresholds(probs, gold), fit_thresholds(probs, gold, shrinkage=0.0))


def test_a_floor_bounds_every_threshold_from_below():
    probs, gold = _draw(np.random.default_rng(4), 500, np.array([0.3, 0.05]))
    assert (fit_thresholds(probs, gold, shrinkage=0.0, floor=0.4) >= 0.4).all()
