"""What training changed, example by example: the predictions table of a run, and what it says.

The recipe builds the table from the logits the before/after evaluation already computed (no extra model pass) and
saves it as `artifacts.PREDICTIONS_FILE`; the report and `Run.changes()` read it back. No torch here.

The table has one row per eval-split example, in the split's order: `text` (and `text_pair` for pair tasks),
`label` (the gold label's name), `pred_before`, `prob_before`, `pred_after`, `prob_after` (the predicted label and
its probability), `prob_after_calibrated` (that probability after temperature scaling), and `probs_before` /
`probs_after`, every label's probability as a list in the run's label order.

In a multi-label run `label`, `pred_before` and `pred_after` are label sets, the names joined with "|" in label
order ("" for none): "before" decides at probability 0.5, "after" at the run's thresholds on calibrated
probabilities, as `predict` does. An example is right when its whole set is; `prob_*` is its most probable label's
probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from loratune.schema import Changes
from loratune.scoring import thresholding
from loratune.scoring.calibration import calibrated_probabilities

KINDS = ("fixed", "broken", "still_wrong")


def build_predictions_table(
    texts: list[str],
    y_true: np.ndarray,
    logits_before: np.ndarray,
    logits_after: np.ndarray,
    labels: list[str],
    temperature: float = 1.0,
    text_pairs: list[str] | None = None,
    thresholds: np.ndarray | None = None,
) -> pd.DataFrame:
    """The predictions table (see the module docstring) from (n, num_labels) logits in the split's order;
    `y_true` holds label ids, or multi-hot rows for a multi-label run (decided at `thresholds`)."""
    if np.ndim(y_true) == 2:
        return _multilabel_table(
            texts, y_true, logits_before, logits_after, labels, temperature, thresholds, text_pairs
        )
    names = np.asarray(labels, dtype=object)
    before = softmax(np.asarray(logits_before, dtype=np.float64), axis=1)
    after = softmax(np.asarray(logits_after, dtype=np.float64), axis=1)
    calibrated = calibrated_probabilities(logits_after, temperature)
    pred_before, pred_after = before.argmax(axis=1), after.argmax(axis=1)
    rows = np.arange(len(texts))
    columns: dict[str, Any] = {"text": list(texts)}
    if text_pairs is not None:
        columns["text_pair"] = list(text_pairs)
    columns |= {
        "label": names[np.asarray(y_true, dtype=int)],
        "pred_before": names[pred_before],
        "prob_before": before[rows, pred_before].astype(np.float32),
        "pred_after": names[pred_after],
        "prob_after": after[rows, pred_after].astype(np.float32),
        "prob_after_calibrated": calibrated[rows, pred_after].astype(np.float32),
        "probs_before": list(before.astype(np.float32)),
        "probs_after": list(after.astype(np.float32)),
    }
    return pd.DataFrame(columns)


def _multilabel_table(texts, y_true, logits_before, logits_after, labels, temperature, thresholds, text_pairs):
    before, after = thresholding.probabilities(logits_before), thresholding.probabilities(logits_after)
    calibrated = thresholding.probabilities(logits_after, temperature)
    columns: dict[str, Any] = {"text": list(texts)}
    if text_pairs is not None:
        columns["text_pair"] = list(text_pairs)
    columns |= {
        "label": thresholding.label_sets(np.asarray(y_true) > 0.5, labels),
        "pred_before": thresholding.label_sets(thresholding.decide(before), labels),
        "prob_before": before.max(axis=1).astype(np.float32),
        "pred_after": thresholding.label_sets(thresholding.decide(calibrated, thresholds), labels),
        "prob_after": after.max(axis=1).astype(np.float32),
        "prob_after_calibrated": calibrated.max(axis=1).astype(np.float32),
        "probs_before": list(before.astype(np.float32)),
        "probs_after": list(after.astype(np.float32)),
    }
    return pd.DataFrame(columns)


def kind_of(table: pd.DataFrame) -> pd.Series:
    """Each example's change: fixed, broken, still_wrong or still_right."""
    right_before = table["pred_before"] == table["label"]
    right_after = table["pred_after"] == table["label"]
    kinds = np.select(
        [~right_before & right_after, right_before & ~right_after, ~right_before & ~right_after],
        ["fixed", "broken", "still_wrong"],
        default="still_right",
    )
    return pd.Series(kinds, index=table.index)


def count_changes(table: pd.DataFrame) -> Changes:
    """How many examples training fixed, broke, left wrong and left right."""
    counts = kind_of(table).value_counts()
    return Changes(**{k: int(counts.get(k, 0)) for k in ("fixed", "broken", "still_wrong", "still_right")})


def examples(table: pd.DataFrame, kind: str, limit: int | None = 5) -> pd.DataFrame:
    """The examples of one kind; the most confident first (after training), since a confident mistake is often a
    label error. `limit=None` gives all of them."""
    chosen = table[kind_of(table) == kind].sort_values("prob_after", ascending=False, kind="stable")
    return chosen if limit is None else chosen.head(limit)


@dataclass(frozen=True)
class ConfusedPair:
    """A (true, predicted) label pair the trained model confuses, with how often and its most confident example."""

    true: str
    predicted: str
    count: int
    example: str


def confused_pairs(table: pd.DataFrame, limit: int = 5) -> list[ConfusedPair]:
    """The most frequent wrong (true, predicted) pairs after training, most frequent first."""
    wrong = table[table["pred_after"] != table["label"]].sort_values("prob_after", ascending=False, kind="stable")
    pairs = []
    for (true, predicted), group in wrong.groupby(["label", "pred_after"], sort=False):
        pairs.append(ConfusedPair(str(true), str(predicted), len(group), str(group["text"].iloc[0])))
    pairs.sort(key=lambda p: (-p.count, p.true, p.predicted))
    return pairs[:limit]
