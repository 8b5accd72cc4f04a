"""What a run found on top of its scores, from logits the recipe already has: the predictions table, calibration
(with the temperature fitted on validation) and significance. No torch and no files here; the recipe saves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from loratune.schema import Calibration, Changes, Significance
from loratune.scoring import calibration, significance, thresholding
from loratune.scoring.changes import build_predictions_table, count_changes


@dataclass(frozen=True)
class Findings:
    table: pd.DataFrame  # the predictions table (`changes.build_predictions_table`)
    changes: Changes
    calibration: Calibration
    significance: Significance
    reliability: dict[str, Any]  # the calibration file: temperature and reliability bins before / after


def fit_decisions(val_logits: np.ndarray, val_true: np.ndarray) -> tuple[float, np.ndarray | None]:
    """The temperature fitted on validation and, for a multi-label run, each label's threshold chosen on the
    calibrated validation probabilities (so `predict` applies T first, then the thresholds).

    Returns:
        (temperature, thresholds or None for a single-label run).
    """
    temperature = calibration.fit_temperature(val_logits, val_true)
    if np.ndim(val_true) != 2:
        return temperature, None
    return temperature, thresholding.tune_thresholds(thresholding.probabilities(val_logits, temperature), val_true)


def compute_findings(
    texts: list[str],
    text_pairs: list[str] | None,
    y_true: np.ndarray,
    logits_before: np.ndarray,
    logits_after: np.ndarray,
    val_logits: np.ndarray,
    val_true: np.ndarray,
    labels: list[str],
    temperature: float = 1.0,
    thresholds: np.ndarray | None = None,
    fitted_on: str = "validation",
    seed: int = 0,
) -> Findings:
    """Everything the report adds to the scores, for (n, num_labels) eval-split logits before and after.

    Args:
        y_true: label ids, or multi-hot rows for a multi-label run.
        val_logits, val_true: the trained model's logits on the split the temperature was fitted on (`fitted_on`).
        temperature, thresholds: as `fit_decisions` chose them.
    """
    multi = np.ndim(y_true) == 2
    table = build_predictions_table(
        texts, y_true, logits_before, logits_after, labels, temperature, text_pairs, thresholds
    )
    if multi:
        probs = {
            "before": thresholding.probabilities(logits_before),
            "after": thresholding.probabilities(logits_after),
            "after_calibrated": thresholding.probabilities(logits_after, temperature),
        }
        pred_before = thresholding.decide(probs["before"])
        pred_after = thresholding.decide(probs["after_calibrated"], thresholds)
        right_before, right_after = (pred_before == (y_true > 0.5)).all(1), (pred_after == (y_true > 0.5)).all(1)
    else:
        probs = {
            "before": softmax(np.asarray(logits_before, dtype=np.float64), axis=1),
            "after": softmax(np.asarray(logits_after, dtype=np.float64), axis=1),
            "after_calibrated": calibration.calibrated_probabilities(logits_after, temperature),
        }
        pred_before, pred_after = probs["before"].argmax(axis=1), probs["after"].argmax(axis=1)
        right_before, right_after = pred_before == y_true, pred_after == y_true
    ece = {k: calibration.expected_calibration_error(p, y_true) for k, p in probs.items()}
    n = len(labels)

    def interval(pred: np.ndarray, metric: str) -> list[float]:
        return list(significance.bootstrap_ci(y_true, pred, n, metric, seed=seed))

    _, _, p_value = significance.mcnemar_exact(right_before, right_after)
    return Findings(
        table=table,
        changes=count_changes(table),
        calibration=Calibration(
            temperature=temperature,
            fitted_on=fitted_on,
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
        reliability={
            "temperature": temperature,
            "fitted_on": fitted_on,
            "validation_nll": calibration.negative_log_likelihood(val_logits, val_true) if len(val_true) else None,
            "validation_nll_calibrated": (
                calibration.negative_log_likelihood(val_logits, val_true, temperature) if len(val_true) else None
            ),
            "bins": {k: calibration.reliability_bins(p, y_true) for k, p in probs.items()},
        },
    )
