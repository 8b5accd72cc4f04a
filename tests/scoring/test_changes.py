"""The predictions table and what it says changed (loratune.scoring.changes)."""

from __future__ import annotations

import numpy as np

from loratune.scoring.changes import (
    Decisions,
    ScoredSplit,
    build_predictions_table,
    confused_pairs,
    count_changes,
    examples,
)
from loratune.task import SINGLE

LABELS = ["neg", "neu", "pos"]


def table_of(texts: list[str], y_true: np.ndarray, before: np.ndarray, after: np.ndarray, temperature: float = 1.0):
    split = ScoredSplit(texts, None, y_true, before, after)
    return build_predictions_table(split, LABELS, SINGLE, Decisions(temperature))


def logits_for(predicted: list[int], confidence: list[float]) -> np.ndarray:
    out = np.zeros((len(predicted), 3))
    out[np.arange(len(predicted)), predicted] = confidence
    return out


def test_counts_add_up_and_match_both_accuracies():
    y_true = np.array([0, 1, 2, 2, 0, 1])
    before = logits_for([0, 0, 0, 2, 1, 1], [1] * 6)  # right: 0, 3, 5
    after = logits_for([0, 1, 2, 0, 1, 2], [1, 2, 3, 4, 5, 6])  # right: 0, 1, 2
    table = table_of([f"t{i}" for i in range(6)], y_true, before, after)
    changes = count_changes(table)
    assert (changes.fixed, changes.broken, changes.still_wrong, changes.still_right) == (2, 2, 1, 1)
    assert changes.still_right + changes.broken == 3  # right before
    assert changes.still_right + changes.fixed == 3  # right after
    assert list(table["label"]) == ["neg", "neu", "pos", "pos", "neg", "neu"]
    assert np.allclose(np.stack(table["probs_after"]).sum(1), 1.0, atol=1e-6)


def test_still_wrong_comes_most_confident_first_and_pairs_are_counted():
    y_true = np.array([0, 0, 0, 2])
    before = logits_for([1, 1, 1, 0], [1, 1, 1, 1])
    after = logits_for([1, 1, 2, 0], [1.0, 5.0, 3.0, 2.0])
    table = table_of(["a", "b", "c", "d"], y_true, before, after)
    assert list(examples(table, "still_wrong", limit=None)["text"]) == ["b", "c", "d", "a"]
    pairs = confused_pairs(table)
    assert (pairs[0].true, pairs[0].predicted, pairs[0].count, pairs[0].example) == ("neg", "neu", 2, "b")


def test_temperature_changes_the_calibrated_probability_but_not_the_label():
    y_true = np.array([0, 1])
    logits = logits_for([0, 0], [3.0, 3.0])
    table = table_of(["a", "b"], y_true, logits, logits, temperature=3.0)
    assert (table["prob_after_calibrated"] < table["prob_after"]).all()
    assert list(table["pred_after"]) == ["neg", "neg"]
