"""Tests for the task (loratune.task) and what it decides between the logits and the run folder: multi-label
decisions, metrics, losses and class weights, calibration and significance (data loading is tested in
test_data_multilabel.py, whole runs in test_multilabel_runs.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, hamming_loss

from loratune.data.batches import PackedTokens
from loratune.errors import ConfigError
from loratune.scoring import calibration, significance
from loratune.scoring.changes import ScoredSplit, build_predictions_table, count_changes
from loratune.scoring.findings import compute_findings, fit_decisions
from loratune.scoring.metrics import compute_multilabel_metrics, metrics_from_logits
from loratune.task import MULTI, SINGLE, task_of
from loratune.training.losses import compute_class_weights

LABELS = ["anger", "joy", "love"]


def _multi_data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Multi-hot truths (joy common, love rare, anger never) and logits that rank them well but sit low."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 3))
    y[:, 1] = rng.random(n) < 0.4
    y[:, 2] = rng.random(n) < 0.08
    logits = 2.5 * y - 3.0 + rng.normal(0, 1.0, (n, 3))
    return y, logits


def test_tuned_thresholds_beat_one_half_on_a_rare_label_and_stay_probabilities():
    y, logits = _multi_data()
    probs = MULTI.probabilities(logits)
    tuned = MULTI.fit_thresholds(probs, y)
    assert ((tuned > 0) & (tuned < 1)).all()
    assert f1_score(y[:, 2], probs[:, 2] >= 0.5, zero_division=0) < f1_score(y[:, 2], probs[:, 2] >= tuned[2])


def test_label_sets_are_joined_in_label_order():
    decided = np.array([[False, True, True], [False, False, False]])
    assert MULTI.names(decided, LABELS) == ["joy|love", ""]
    assert SINGLE.names(np.array([2, 0]), LABELS) == ["love", "anger"]


def test_a_single_label_task_has_no_thresholds_and_a_multi_label_one_needs_them():
    y, logits = _multi_data()
    assert SINGLE.fit_thresholds(SINGLE.probabilities(logits), y.argmax(1)) is None
    assert MULTI.fit_thresholds(MULTI.probabilities(logits), y).shape == (3,)
    assert (task_of("single"), task_of("multi")) == (SINGLE, MULTI)
    assert not SINGLE.needs_thresholds and MULTI.needs_thresholds


def test_predict_answers_a_label_or_a_label_set():
    row = [0.2, 0.7, 0.6]
    assert SINGLE.answer(row, 1, LABELS) == {
        "label": "joy",
        "score": 0.7,
        "probabilities": dict(zip(LABELS, row, strict=True)),
    }
    answer = MULTI.answer(row, np.array([False, True, True]), LABELS)
    assert answer["labels"] == ["joy", "love"] and answer["scores"] == [0.7, 0.6]


def test_multilabel_metrics_agree_with_sklearn():
    y, logits = _multi_data()
    pred = logits > 0
    m = compute_multilabel_metrics(y, pred, LABELS)
    assert m.micro_f1 is not None and m.confusion_matrix == []
    assert m.f1 == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m.micro_f1 == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))
    assert m.samples_f1 == pytest.approx(f1_score(y, pred, average="samples", zero_division=0))
    assert m.hamming_loss == pytest.approx(hamming_loss(y, pred))
    assert m.accuracy == pytest.approx(((y > 0.5) == pred).all(axis=1).mean())
    assert m.per_class["love"].support == int(y[:, 2].sum())


def test_metrics_from_logits_apply_temperature_and_thresholds():
    y, logits = _multi_data()
    at_half = metrics_from_logits(logits, y, LABELS, MULTI)
    thresholds = MULTI.fit_thresholds(MULTI.probabilities(logits), y)
    tuned = metrics_from_logits(logits, y, LABELS, MULTI, thresholds=thresholds)
    assert tuned.f1 > at_half.f1
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(y)).item()
    assert tuned.loss == pytest.approx(expected, rel=1e-5)


def test_single_label_metrics_report_balanced_accuracy():
    y = np.array([0] * 90 + [1] * 10)
    logits = np.zeros((100, 2))
    logits[:, 0] = 1.0  # always the majority class: 0.90 accurate, 0.5 balanced
    m = metrics_from_logits(logits, y, ["ham", "spam"], SINGLE)
    assert m.accuracy == pytest.approx(0.9) and m.balanced_accuracy == pytest.approx(0.5)
    assert m.micro_f1 is None


def test_balanced_class_weights():
    ids = np.array([0] * 90 + [1] * 10)
    weights = compute_class_weights("balanced", ids, ["ham", "spam"], SINGLE)
    assert weights == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])
    multi_hot = np.array([[1, 0], [1, 1], [1, 0], [0, 0]], dtype=float)
    assert compute_class_weights("balanced", multi_hot, ["a", "b"], MULTI) == pytest.approx([1 / 3, 3 / 1])
    assert compute_class_weights("none", ids, ["ham", "spam"], SINGLE) is None


def test_class_weights_from_a_file(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_text("spam: 4\n")
    assert compute_class_weights(str(path), np.array([0, 1]), ["ham", "spam"], SINGLE) == pytest.approx([1.0, 4.0])
    for text, message in (("eggs: 2\n", "lacks"), ("spam: -1\n", "positive"), ("- 1\n", "map label names")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=message) as error:
            compute_class_weights(str(path), np.array([0, 1]), ["ham", "spam"], SINGLE)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="neither none, balanced nor a file"):
        compute_class_weights(str(tmp_path / "missing.json"), np.array([0, 1]), ["ham", "spam"], SINGLE)


def test_weighted_losses_match_torch():
    logits = torch.randn(6, 2)
    targets = torch.tensor([0, 0, 0, 0, 1, 1])
    weights = np.array([1.0, 3.0])
    expected = torch.nn.functional.cross_entropy(logits, targets, weight=torch.tensor([1.0, 3.0]))
    assert SINGLE.loss(weights)(logits, targets).item() == pytest.approx(expected.item())
    multi = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    logits = torch.randn(3, 2)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, multi, pos_weight=torch.tensor([1.0, 3.0]))
    assert MULTI.loss(weights)(logits, multi).item() == pytest.approx(expected.item())


def test_batches_give_float_rows_for_multi_label():
    from datasets import Dataset

    rows = [{"input_ids": [1, 2], "label": [1.0, 0.0, 1.0]}, {"input_ids": [1], "label": [0.0, 0.0, 0.0]}]
    batch = PackedTokens.from_dataset(Dataset.from_list(rows), pad_token_id=0).__getitems__([0, 1])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (2, 3)


def test_temperature_calibrates_overconfident_multilabel_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(-1.5, 1.5, (3000, 3))
    y = (rng.random(logits.shape) < MULTI.probabilities(logits)).astype(float)  # calibrated at T = 1
    overconfident = logits * 4.0
    decisions = fit_decisions(overconfident, y, MULTI)
    temperature = decisions.temperature
    assert temperature == pytest.approx(4.0, rel=0.15) and decisions.thresholds is not None
    before = calibration.expected_calibration_error(MULTI.probabilities(overconfident), y, MULTI)
    after = calibration.expected_calibration_error(MULTI.probabilities(overconfident, temperature), y, MULTI)
    assert after < before / 2
    nll = MULTI.negative_log_likelihood
    assert nll(overconfident, y, temperature) < nll(overconfident, y)


def test_multilabel_bootstrap_brackets_the_score_and_identical_sets_are_not_significant():
    y, logits = _multi_data(600)
    pred = logits > -1.0
    low, high = significance.bootstrap_ci(MULTI, y, pred, 3, "f1")
    assert low < f1_score(y, pred, average="macro", zero_division=0) < high
    low, high = significance.bootstrap_ci(MULTI, y, pred, 3, "accuracy")
    assert low < ((y > 0.5) == pred).all(axis=1).mean() < high
    right = ((y > 0.5) == pred).all(axis=1)
    assert significance.mcnemar_exact(right, right)[2] == 1.0


def test_multilabel_findings_count_whole_sets():
    y, logits_after = _multi_data(300)
    logits_before = np.full_like(logits_after, -5.0)  # predicts no label: right only where the gold set is empty
    val_y, val_logits = _multi_data(300, seed=3)
    decisions = fit_decisions(val_logits, val_y, MULTI)
    texts = [f"text {i}" for i in range(len(y))]
    split = ScoredSplit(texts, None, y, logits_before, logits_after)
    validation = ScoredSplit([""] * len(val_y), None, val_y, val_logits, val_logits)
    findings = compute_findings(split, validation, LABELS, MULTI, decisions)
    table = findings.table
    assert set(table["pred_before"]) == {""}
    empty = (y.sum(axis=1) == 0).sum()
    c = findings.changes
    assert c.still_right + c.broken == empty and sum(vars(c).values()) == len(y)
    assert table.loc[0, "label"] == MULTI.names(y[:1] > 0.5, LABELS)[0]
    assert len(table.loc[0, "probs_after"]) == 3
    again = build_predictions_table(split, LABELS, MULTI, decisions)
    assert count_changes(again) == c
