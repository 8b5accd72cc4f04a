"""ECE, reliability bins and temperature scaling (loratune.scoring.calibration)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from loratune.scoring.calibration import expected_calibration_error, fit_temperature, reliability_bins
from loratune.task import MULTI, SINGLE


def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 70%-accurate 3-class model that is nearly always over 95% sure of itself."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)
    guess = np.where(rng.random(n) < 0.7, y_true, (y_true + 1) % 3)
    logits = rng.normal(0, 0.5, (n, 3))
    logits[np.arange(n), guess] += 6.0
    return logits, y_true


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model_without_changing_a_label():
    val_logits, val_true = overconfident(2000, seed=0)
    test_logits, test_true = overconfident(2000, seed=1)
    temperature = fit_temperature(val_logits, val_true, SINGLE)
    assert temperature > 1.5  # over-confident: the fit softens the scores

    raw = softmax(test_logits, axis=1)
    calibrated = SINGLE.probabilities(test_logits, temperature)
    ece = expected_calibration_error(calibrated, test_true, SINGLE)
    assert ece < expected_calibration_error(raw, test_true, SINGLE) / 3
    # accuracy cannot change: T > 0 keeps every row's argmax
    assert (calibrated.argmax(1) == raw.argmax(1)).all()


def test_a_calibrated_model_keeps_a_temperature_near_one():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, (5000, 4))
    y_true = np.array([rng.choice(4, p=p) for p in softmax(logits, axis=1)])  # labels drawn from its own scores
    assert abs(fit_temperature(logits, y_true, SINGLE) - 1.0) < 0.1


def test_ece_of_a_hand_worked_single_label_example():
    # Two texts at confidence 0.9 with one right, two at 0.6 both right: each bin is 0.4 off, so ECE is 0.4.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y_true = np.array([0, 1, 1, 1])
    bins = reliability_bins(probs, y_true, SINGLE)
    assert [(b["count"], b["confidence"], b["accuracy"]) for b in bins] == [(2, 0.6, 1.0), (2, 0.9, 0.5)]
    assert expected_calibration_error(probs, y_true, SINGLE) == pytest.approx(0.4)


def test_ece_of_a_hand_worked_multi_label_example():
    # Each (text, label) probability is a prediction: 0.9 for a true label (0.1 off), 0.2 for a false one (0.2 off).
    probs, y_true = np.array([[0.9, 0.2]]), np.array([[1.0, 0.0]])
    assert expected_calibration_error(probs, y_true, MULTI) == pytest.approx(0.15)


def test_reliability_bins_count_every_example_once():
    logits, y_true = overconfident(300, seed=2)
    bins = reliability_bins(softmax(logits, axis=1), y_true, SINGLE)
    assert sum(b["count"] for b in bins) == 300
    assert all(b["low"] <= b["confidence"] <= b["high"] for b in bins)
