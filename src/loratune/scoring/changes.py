"""What training changed, example by example: the predictions table of a run, and what it says.

The recipe builds the table from the logits the before/after evaluation already computed (no extra model pass) and
saves it as `files.PREDICTIONS_FILE`; the report and `RunFolder.changes()` read it back. No torch here.

The table has one row per eval-split example, in the split's order: `text` (and `text_pair` for pair tasks),
`label` (the gold label's name), `pred_before`, `prob_before`, `pred_after`, `prob_after` (the predicted label and
its probability), `prob_after_calibrated` (that probability after temperature scaling), and `probs_before` /
`probs_after`, every label's probability as a list in the run's label order (only in runs of at most
`schema.DETAILED_LABELS` labels).

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

from loratune.schema import DETAILED_LABELS, Changes
from loratune.task import Task

KINDS = ("fixed", "broken", "still_wrong")


@dataclass(frozen=True)
class ScoredSplit:
    """One split scored before and after training: its texts (and pairs), true labels and both models' logits."""

    texts: list[str]
    text_pairs: list[str] | None
    y_true: np.ndarray  # as the task holds labels: ids, or multi-hot rows
    logits_before: np.ndarray  # (n, num_labels), in the split's order
    logits_after: np.ndarray


@dataclass(frozen=True)
class Decisions:
    """What the trained model decides with, fitted on validation: the temperature, and the per-label thresholds of
    a task that decides with them (None otherwise)."""

    temperature: float = 1.0
    thresholds: np.ndarray | None = None


def build_predictions_table(split: ScoredSplit, labels: list[str], task: Task, decisions: Decisions) -> pd.DataFrame:
    """The predictions table (see the module docstring). "Before" decides as an untrained model does (the default
    thresholds); "after" as `predict` does, on calibrated probabilities with the run's thresholds."""
    before, after = task.probabilities(split.logits_before), task.probabilities(split.logits_after)
    calibrated = task.probabilities(split.logits_after, decisions.temperature)
    columns: dict[str, Any] = {"text": list(split.texts)}
    if split.text_pairs is not None:
        columns["text_pair"] = list(split.text_pairs)
    columns |= {
        "label": task.names(split.y_true, labels),
        "pred_before": task.names(task.decide(before), labels),
        "prob_before": before.max(axis=1).astype(np.float32),
        "pred_after": task.names(task.decide(calibrated, decisions.thresholds), labels),
        "prob_after": after.max(axis=1).astype(np.float32),
        "prob_after_calibrated": calibrated.max(axis=1).astype(np.float32),
    }
    if len(labels) <= DETAILED_LABELS:  # past it, one list per example of thousands of numbers: hundreds of MB
        columns |= {"probs_before": list(before.astype(np.float32)), "probs_after": list(after.astype(np.float32))}
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
