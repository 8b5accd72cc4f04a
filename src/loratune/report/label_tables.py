"""What a report says about the labels, for either task: the before/after results table, the per-class or per-label
table, and the class weights the loss used.

A single-label run picks one label per text. A multi-label run picks a set, and is scored per label (with that
label's decision threshold), averaged three ways (micro: over every (text, label) decision; macro: the mean over
labels; samples: the mean over texts), and per text (subset accuracy: the whole set right; Hamming loss: the share
of (text, label) decisions that are wrong). `report.run_report` places these blocks; `report.render` draws them.
"""

from __future__ import annotations

from loratune.formatting import DASH, METRICS, change, count, fixed, percent, share_of_count
from loratune.report.render import Block, Heading, Table, Text
from loratune.runs import files
from loratune.schema import ClassScores, Metrics, RunSummary
from loratune.task import task_of

SINGLE_LABEL_RESULTS = (*METRICS, ("balanced_accuracy", "balanced accuracy"))
MULTI_LABEL_RESULTS = (
    ("accuracy", "subset accuracy"),
    ("micro_precision", "precision (micro)"),
    ("micro_recall", "recall (micro)"),
    ("micro_f1", "F1 (micro)"),
    ("precision", "precision (macro)"),
    ("recall", "recall (macro)"),
    ("f1", "F1 (macro)"),
    ("samples_precision", "precision (samples)"),
    ("samples_recall", "recall (samples)"),
    ("samples_f1", "F1 (samples)"),
    ("hamming_loss", "Hamming loss (lower is better)"),
)
# Past this many classes the first table leaves per-class recall to the per-class table, or it would bury the rest.
RECALL_ROWS = 10
# Past this many labels the report's tables and charts show the most frequent ones, and say so: a table of 5,000
# rows or a chart of 5,000 bars is one nobody reads, and takes minutes to draw. The metrics file keeps every label.
SHOWN_LABELS = 30


def by_support(s: RunSummary, labels: list[str]) -> list[str]:
    """The labels, those with the most eval-split examples first (ties keep the label order)."""
    scores = s.after.per_class
    return sorted(labels, key=lambda label: -scores[label].support if label in scores else 0)


def shown_labels(s: RunSummary, labels: list[str]) -> list[str]:
    """The labels the report lists: all of them in label order, or past `SHOWN_LABELS` the most frequent ones."""
    return list(labels) if len(labels) <= SHOWN_LABELS else by_support(s, labels)[:SHOWN_LABELS]


def shown_note(s: RunSummary, labels: list[str]) -> list[Block]:
    """The note under a table or chart that lists only `shown_labels`; nothing when it lists them all."""
    if len(labels) <= SHOWN_LABELS:
        return []
    noun = task_of(s.task).unit
    nouns = noun + ("es" if noun.endswith("s") else "s")
    return [
        Text(
            f"Only the {SHOWN_LABELS} {nouns} with the most {s.eval_split} examples, of {count(len(labels))}; "
            f"{files.METRICS_FILE} has every {noun}'s scores.",
            muted=True,
        )
    ]


def _row(name: str, before: float | None, after: float | None) -> list[str]:
    return [name, percent(before), percent(after), change(after, before)]


def results_table(s: RunSummary, labels: list[str]) -> Table:
    """The first table: every headline score before and after training, with the change.

    Single-label: accuracy, macro precision / recall / F1, balanced accuracy, and each class's recall (up to
    RECALL_ROWS classes), which show what accuracy hides on imbalanced data. Multi-label: subset accuracy, the micro,
    macro and samples averages, and Hamming loss.
    """
    return _RESULTS_OF_TASK[s.task](s, labels)


def _class_results(s: RunSummary, labels: list[str]) -> Table:
    before, after = s.before, s.after
    rows = [_row(name, getattr(before, key), getattr(after, key)) for key, name in SINGLE_LABEL_RESULTS]
    if len(labels) <= RECALL_ROWS:
        rows += [_row(f"recall: {label}", _recall(before, label), _recall(after, label)) for label in labels]
    return Table(["metric", "before", "after", "change"], rows, signed=(3,))


def _label_set_results(s: RunSummary, labels: list[str]) -> Table:
    before, after = s.before, s.after
    rows = [_row(name, getattr(before, key), getattr(after, key)) for key, name in MULTI_LABEL_RESULTS]
    # Hamming loss is an error rate: its fall is the good news, so its change is coloured the other way.
    return Table(["metric", "before", "after", "change"], rows, signed=(3,), lower_is_better=(len(rows) - 1,))


_RESULTS_OF_TASK = {"single": _class_results, "multi": _label_set_results}


def _recall(metrics: Metrics, label: str) -> float | None:
    scores = metrics.per_class.get(label)
    return None if scores is None else scores.recall


def results_note(s: RunSummary, labels: list[str]) -> Text:
    """What the first table's less familiar rows mean."""
    return _NOTES_OF_TASK[s.task](labels)


def _label_set_note(labels: list[str]) -> Text:
    return Text(
        "Subset accuracy counts a text right only when its whole label set is. Micro averages pool every "
        "(text, label) decision, so frequent labels dominate; macro averages weigh every label the same; samples "
        "averages score each text's label set, then average over texts. Hamming loss is the share of "
        "(text, label) decisions that are wrong.",
        muted=True,
    )


def _class_note(labels: list[str]) -> Text:
    recall = "" if len(labels) <= RECALL_ROWS else " Each class's recall is in the per-class table below."
    return Text(
        "Balanced accuracy is the mean of the classes' recall: unlike accuracy, a majority class cannot carry it, so "
        f"on imbalanced data it shows whether the small classes are found.{recall}",
        muted=True,
    )


_NOTES_OF_TASK = {"single": _class_note, "multi": _label_set_note}


def _f1_change(s: RunSummary, label: str) -> tuple[ClassScores | None, list[str]]:
    """A label's scores after training, and its "F1 before" and "F1 change" cells."""
    after, before = s.after.per_class.get(label), s.before.per_class.get(label)
    before_f1 = before.f1 if before else None
    return after, [percent(before_f1), change(after.f1 if after else None, before_f1)]


def per_class_table(s: RunSummary, labels: list[str]) -> Table:
    """Single-label: each class's scores after training, and its F1 before with the change."""
    rows = []
    for label in shown_labels(s, labels):
        after, f1_change = _f1_change(s, label)
        if after is None:
            scores = [DASH] * 4
        else:
            scores = [percent(after.precision), percent(after.recall), percent(after.f1), count(after.support)]
        rows.append([label, *scores, *f1_change])
    header = ["label", "precision", "recall", "F1", "support", "F1 before", "F1 change"]
    return Table(header, rows, signed=(6,))


def per_label_blocks(s: RunSummary, labels: list[str], thresholds: list[float] | None) -> list[Block]:
    """Multi-label: each label's support, scores after training, F1 before with the change, and its threshold;
    the most frequent labels first."""
    threshold_of = dict(zip(labels, thresholds, strict=True)) if thresholds else {}
    n = s.after.num_samples
    rows = []
    for label in by_support(s, labels)[:SHOWN_LABELS]:
        after, f1_change = _f1_change(s, label)
        if after is None:
            scores = [DASH] * 4
        else:
            scores = [share_of_count(after.support, n), percent(after.precision), percent(after.recall)]
            scores.append(percent(after.f1))
        rows.append([label, *scores, *f1_change, fixed(threshold_of.get(label), digits=2)])
    header = ["label", "support", "precision", "recall", "F1", "F1 before", "F1 change", "threshold"]
    if thresholds:
        where = f"each label's decision threshold ({files.THRESHOLDS_FILE}, chosen on the validation split)"
    else:
        where = f"the default threshold ({files.THRESHOLDS_FILE} is missing from this run folder)"
    return [
        Text(
            f"Sorted by support: the {s.eval_split} texts that carry the label, with their share. Precision, "
            f"recall and F1 after training use {where}.",
            muted=True,
        ),
        Table(header, rows, signed=(6,)),
        *shown_note(s, labels),
    ]


def per_label_section(s: RunSummary, labels: list[str], thresholds: list[float] | None) -> list[Block]:
    """The per-class table (single-label) or the per-label one, under its heading."""
    return _PER_LABEL_OF_TASK[s.task](s, labels, thresholds)


def _per_class_section(s: RunSummary, labels: list[str], thresholds: list[float] | None) -> list[Block]:
    return [Heading("Per class"), per_class_table(s, labels), *shown_note(s, labels)]


def _per_label_section(s: RunSummary, labels: list[str], thresholds: list[float] | None) -> list[Block]:
    return [Heading("Per label"), *per_label_blocks(s, labels, thresholds)]


_PER_LABEL_OF_TASK = {"single": _per_class_section, "multi": _per_label_section}


def class_weight_blocks(s: RunSummary, labels: list[str]) -> list[Block]:
    """The loss weights the model was trained with, when the run used any."""
    weights = s.class_weights
    if not weights:
        return []
    text, header, by_frequency = _WEIGHTS_OF_TASK[s.task]
    order = by_support(s, labels) if by_frequency else shown_labels(s, labels)
    order = order[:SHOWN_LABELS]
    order += [label for label in weights if label not in labels]  # a weight for a label the run lacks still shows
    return [
        Text(text, muted=True),
        Table(["label", header], [[label, fixed(weights.get(label), digits=2)] for label in order]),
        *shown_note(s, labels),
    ]


# What the class weights are, what their column is called, and whether the labels are listed by frequency.
_WEIGHTS_OF_TASK = {
    "single": (
        "Trained with class weights: each class's examples weigh this much in the loss.",
        "class weight",
        False,
    ),
    "multi": (
        "Trained with weighted positives: each label's positive examples weigh this much in the loss.",
        "weight of positives",
        True,
    ),
}
