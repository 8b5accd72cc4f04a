"""The report's example-level sections: what changed, confidence, significance and the data checks.

Built from the run folder's files alone (the predictions table, the calibration file, the data checks and the
summary), as blocks for `report.render`; `report.run_report` places them. A folder without one of these files shows
a one-line note instead of its section. In a multi-label run an example is right only when its whole
label set is, and the predictions file holds each set as its label names joined with "|" (in label order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from loratune.formatting import DASH, NO_LABELS, count, fixed, percent, share_of_count
from loratune.report.render import Block, Table, Text
from loratune.runs import files
from loratune.schema import SET_SEPARATOR, RunSummary
from loratune.scoring.changes import confused_pairs, examples
from loratune.task import task_of

EXAMPLES = 5
_TEXT_CHARS = 90


def _clip(text: Any) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _TEXT_CHARS else text[: _TEXT_CHARS - 1] + "…"


def _label_set(value: Any) -> str:
    """A multi-label prediction as the report shows it: "anger, joy", or "(none)" for the empty set."""
    return ", ".join(str(value).split(SET_SEPARATOR)) if str(value) else NO_LABELS


def _missing(what: str) -> Text:
    return Text(f"{DASH} (this run folder has no {what}; its run stopped before writing it)", muted=True)


@dataclass(frozen=True)
class _Examples:
    """How a task's examples read in the report's tables."""

    right: str  # when an example counts as right, said after the counts (empty: the obvious)
    show: Callable[[Any], str]  # a gold or predicted label as shown
    probability: str  # the header of the after-training probability column
    wrap: tuple[int, ...]  # the columns that wrap
    confusions: Callable[[pd.DataFrame], list[Block]]  # what follows the examples


def _confused_pairs(table: pd.DataFrame) -> list[Block]:
    pairs = confused_pairs(table, EXAMPLES)
    if not pairs:
        return []
    return [
        Text("Most-confused label pairs after training, each with its most confident example:", muted=True),
        Table(
            ["true", "predicted", "examples", "example"],
            [[p.true, p.predicted, count(p.count), _clip(p.example)] for p in pairs],
            align="llrl",
            wrap=(3,),
        ),
    ]


def _no_confused_pairs(table: pd.DataFrame) -> list[Block]:
    # A wrong label set is not one label mistaken for another; the per-label table shows what is missed.
    note = (
        "Most-confused label pairs are a single-label view and are left out; the per-label precision and recall "
        "below show which labels are missed or over-predicted."
    )
    return [Text(note, muted=True)]


_EXAMPLES_OF_TASK = {
    "single": _Examples("", str, "p after", (0,), _confused_pairs),
    "multi": _Examples(
        " An example counts as right only when its whole label set is.",
        _label_set,
        "top p after",
        (0, 1, 2, 3),
        _no_confused_pairs,
    ),
}


def changes_blocks(s: RunSummary, table: pd.DataFrame | None) -> list[Block]:
    """Fixed / broken / still-wrong counts and examples, and the most-confused label pairs after training."""
    if table is None or s.changes is None:
        return [_missing(files.PREDICTIONS_FILE)]
    c, n, how = s.changes, len(table), _EXAMPLES_OF_TASK[s.task]
    blocks: list[Block] = [
        Text(
            f"Of {count(n)} {s.eval_split} examples, training fixed {count(c.fixed)} (wrong before, right after), "
            f"broke {count(c.broken)} (right before, wrong after), left {count(c.still_wrong)} wrong and "
            f"{count(c.still_right)} right.{how.right} Every example, with both predictions and probabilities, is in "
            f"{files.PREDICTIONS_FILE}."
        ),
        Table(
            ["change", "examples"],
            [
                ["fixed", share_of_count(c.fixed, n)],
                ["broken", share_of_count(c.broken, n)],
                ["still wrong", share_of_count(c.still_wrong, n)],
                ["still right", share_of_count(c.still_right, n)],
            ],
        ),
    ]
    titles = {
        "fixed": "Fixed, most confident first:",
        "broken": "Broken, most confident first:",
        "still_wrong": "Still wrong, most confident first (a confident mistake is often a label error):",
    }
    shown = how.show
    for kind, title in titles.items():
        rows = examples(table, kind, EXAMPLES)
        if rows.empty:
            continue
        blocks += [
            Text(title, muted=True),
            Table(
                ["text", "gold", "before", "after", how.probability],
                [
                    [_clip(r.text), shown(r.label), shown(r.pred_before), shown(r.pred_after), percent(r.prob_after)]
                    for r in rows.itertuples()
                ],
                align="llllr",
                wrap=how.wrap,
            ),
        ]
    return blocks + how.confusions(table)


def confidence_blocks(s: RunSummary, calibration: dict[str, Any] | None) -> list[Block]:
    """ECE before, after and after temperature scaling; the figure is placed by the caller."""
    cal = s.calibration
    if cal is None or calibration is None:
        return [_missing(files.CALIBRATION_FILE)]
    overlap = (
        " (the same split the scores are on, so the calibrated figure flatters)"
        if s.eval_split == "validation"
        else ""
    )
    return _CONFIDENCE_OF_TASK[s.task](s, overlap)


def _label_confidence(s: RunSummary, overlap: str) -> list[Block]:
    cal = s.calibration
    return [
        Text(
            f"Expected calibration error (ECE: the gap between predicted probability and the fraction of true "
            f"labels, over {cal.n_bins} probability bins of every (text, label) pair) on the {s.eval_split} "
            f"split: {percent(cal.ece_before)} before, {percent(cal.ece_after)} after training, "
            f"{percent(cal.ece_after_calibrated)} after temperature scaling "
            f"(T = {fixed(cal.temperature, digits=2)}, fitted on the {cal.fitted_on} split{overlap})."
        ),
        Text(
            f"The temperature divides the logits before the sigmoid, and each label's decision threshold "
            f"({files.THRESHOLDS_FILE}) applies to the probability so scaled. loratune predict and loratune "
            f"export apply both; the temperature is kept in {files.CALIBRATION_FILE}.",
            muted=True,
        ),
    ]


def _class_confidence(s: RunSummary, overlap: str) -> list[Block]:
    cal = s.calibration
    return [
        Text(
            f"Expected calibration error (ECE: the gap between confidence and accuracy, over {cal.n_bins} "
            f"confidence bins) on the {s.eval_split} split: {percent(cal.ece_before)} before, "
            f"{percent(cal.ece_after)} after training, {percent(cal.ece_after_calibrated)} after temperature "
            f"scaling (T = {fixed(cal.temperature, digits=2)}, fitted on the {cal.fitted_on} split{overlap})."
        ),
        Text(
            f"The temperature divides the logits before the softmax; it never changes which label wins, so accuracy "
            f"is unchanged. loratune predict and loratune export apply it; it is kept in "
            f"{files.CALIBRATION_FILE}.",
            muted=True,
        ),
    ]


# The confidence section's text: top-label confidence of a class, or every (text, label) probability.
_CONFIDENCE_OF_TASK = {"single": _class_confidence, "multi": _label_confidence}


def significance_blocks(s: RunSummary) -> list[Block]:
    """Bootstrap intervals of accuracy and macro-F1 before and after, and McNemar's test of before vs after."""
    sig = s.significance
    if sig is None:
        return [_missing("significance figures")]

    def interval(bounds: list[float]) -> str:
        return f"{percent(bounds[0])} – {percent(bounds[1])}" if len(bounds) == 2 else DASH

    p = sig.mcnemar_p
    verdict = DASH if p is None else ("significant" if p < 0.05 else "not significant") + " at 5%"
    task = task_of(s.task)
    return [
        Table(
            ["metric", "before", f"{sig.confidence:.0%} CI before", "after", f"{sig.confidence:.0%} CI after"],
            [
                [
                    task.accuracy_name,
                    percent(s.before.accuracy),
                    interval(sig.accuracy_before),
                    percent(s.after.accuracy),
                    interval(sig.accuracy_after),
                ],
                [
                    "F1 (macro)",
                    percent(s.before.f1),
                    interval(sig.f1_before),
                    percent(s.after.f1),
                    interval(sig.f1_after),
                ],
            ],
        ),
        Text(
            f"Intervals: percentile bootstrap over the {s.eval_split} examples ({count(sig.n_resamples)} "
            f"resamples). McNemar's exact test of before against after (fixed vs broken examples"
            f"{_WHOLE_SETS[task.name]}): p {_p(p)}, {verdict}.",
            muted=True,
        ),
    ]


# How McNemar's test counts an example right, where that needs saying.
_WHOLE_SETS = {"single": "", "multi": ", each right only with its whole label set"}


def _p(value: float | None) -> str:
    if value is None:
        return DASH
    return "< 0.0001" if value < 1e-4 else f"= {value:.4f}"


def data_check_blocks(checks: dict[str, Any] | None) -> list[Block]:
    """The data checks file as a table per split, the texts shared across splits, and the warnings."""
    if checks is None:
        return [_missing(files.DATA_CHECKS_FILE)]
    splits = checks.get("splits", {})
    fields = [
        ("rows", "rows"),
        ("duplicate_texts", "duplicates"),
        ("duplicate_texts_normalised", "duplicates (normalised)"),
        ("conflicting_texts", "conflicting labels"),
        ("short_texts", "very short"),
        ("dropped_rows", "dropped (empty)"),
        ("truncated", "truncated"),
    ]
    per_split = Table(
        ["check", *splits],
        [[name, *[count(found.get(key)) for found in splits.values()]] for key, name in fields],
    )
    shared = Table(
        ["splits", "shared texts", "normalised", "example"],
        [
            [
                pair,
                count(found.get("texts")),
                count(found.get("texts_normalised")),
                _clip(found["examples"][0]) if found.get("examples") else DASH,
            ]
            for pair, found in checks.get("shared", {}).items()
        ],
        align="lrrl",
        wrap=(3,),
    )
    ratio = checks.get("imbalance_ratio")
    warnings = checks.get("warnings") or []
    blocks: list[Block] = [
        Text(
            "Checked before training, on the splits as used. Texts are compared exactly and normalised (case and "
            f"spaces); very short means at most two words. Train imbalance (largest / smallest class): "
            f"{fixed(ratio, digits=1) if ratio is not None else '∞'}.",
            muted=True,
        ),
        per_split,
        shared,
    ]
    conflicts = checks.get("conflict_examples") or []
    if conflicts:
        blocks.append(
            Table(
                ["split", "text with conflicting labels", "labels"],
                [[c["split"], _clip(c["text"]), ", ".join(c["labels"])] for c in conflicts[:EXAMPLES]],
                align="lll",
                wrap=(1,),
            )
        )
    blocks.append(Text("Warnings: " + "; ".join(warnings) + "." if warnings else "No warnings.", muted=not warnings))
    return blocks
