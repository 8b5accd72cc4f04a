"""What a run found on top of its scores, from logits the recipe already has: the predictions table, calibration
(with the temperature fitted on validation) and significance. No torch and no files here; the recipe saves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from loratune.schema import Calibration, Changes, Significance
from loratune.scoring import calibration, significance
from loratune.scoring.changes import Decisions, ScoredSplit, build_predictions_table, count_changes
from loratune.task import Task


@dataclass(frozen=True)
class Findings:
    table: pd.DataFrame  # the predictions table (`changes.build_predictions_table`)
    changes: Changes
    calibration: Calibration
    significance: Significance
    reliability: dict[str, Any]  # the calibration file: temperature and reliability bins before / after


def fit_decisions(val_logits: np.ndarray, val_true: np.ndarray, task: Task) -> Decisions:
    """The temperature fitted on validation and, for a task that decides with thresholds, each label's threshold
    chosen on the calibrated validation probabilities (so `predict` applies T first, then the thresholds)."""
    temperature = calibration.fit_temperature(val_logits, val_true, task)
    return Decisions(temperature, task.fit_thresholds(task.probabilities(val_logits, temperature), val_true))


def compute_findings(
    split: ScoredSplit, validation: ScoredSplit, labels: list[str], task: Task, decisions: Decisions, seed: int = 0
) -> Findings:
    """Everything the report adds to the scores of the eval split.

    Args:
        split: the eval split, scored before and after.
        validation: the split `decisions` were fitted on; its `logits_after` are the trained model's.
        decisions: as `fit_decisions` chose them.
    """
    y_true, temperature = split.y_true, decisions.temperature
    table = build_predictions_table(split, labels, task, decisions)
    probs = {
        "before": task.probabilities(split.logits_before),
        "after": task.probabilities(split.logits_after),
        "after_calibrated": task.probabilities(split.logits_after, temperature),
    }
    pred_before = task.decide(probs["before"])
    pred_after = task.decide(probs["after_calibrated"], decisions.thresholds)
    ece = {k: calibration.expected_calibration_error(p, y_true, task) for k, p in probs.items()}

    def interval(pred: np.ndarray, metric: str) -> list[float]:
        return list(significance.bootstrap_ci(task, y_true, pred, len(labels), metric, seed=seed))

    _, _, p_value = significance.mcnemar_exact(task.correct(pred_before, y_true), task.correct(pred_after, y_true))
    return Findings(
        table=table,
        changes=count_changes(table),
        calibration=Calibration(
            temperature=temperature,
            fitted_on="validation",
            ece_before=ece["before"],
            ece_after=ece["after"],
            ece_after_calibrated=ece["after_calibrated"],
            n_bins=calibration.N_BINS,
        ),
        significance=Significance(
            confidence=significance.CONFIDENCE,
            n_resamples=significance.N_RESAMPLES,
            accuracy_before=interval(pred_before, "accuracy"),
            accuracy_after=interval(pred_after, "accuracy"),
            f1_before=interval(pred_before, "f1"),
            f1_after=interval(pred_after, "f1"),
            mcnemar_p=p_value,
        ),
        reliability=_reliability(validation, task, temperature, {k: (p, y_true) for k, p in probs.items()}),
    )


def _reliability(validation: ScoredSplit, task: Task, temperature: float, scored: dict[str, Any]) -> dict[str, Any]:
    """The calibration file: the temperature, the validation loss without and with it, and the reliability bins."""
    val_logits, val_true = validation.logits_after, validation.y_true
    fitted = len(val_true) > 0
    return {
        "temperature": temperature,
        "fitted_on": "validation",
        "validation_nll": task.negative_log_likelihood(val_logits, val_true) if fitted else None,
        "validation_nll_calibrated": task.negative_log_likelihood(val_logits, val_true, temperature)
        if fitted
        else None,
        "bins": {k: calibration.reliability_bins(p, y, task) for k, (p, y) in scored.items()},
    }
