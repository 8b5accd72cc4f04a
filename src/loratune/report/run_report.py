"""report.md and report.html for a run folder, with their plots.

Everything here is rendered from the files a run leaves on disk (see docs/run-folder.md), read through
`loratune.runs.files`, so a report can be rebuilt, moved or tested without a model. This module decides what a
report says, as one list of blocks; `report.render` turns that list into both the Markdown and the HTML, which
keeps the two outputs in step. The plots are drawn by `report.plots`, numbers are written by
`loratune.formatting`, what is said about the labels (which depends on the task: single- or multi-label) by
`report.label_tables`, and the side-by-side comparison of several runs lives in `report.comparison`.
"""

from __future__ import annotations

from pathlib import Path

from loratune.formatting import (
    DASH,
    change,
    count,
    fixed,
    megabytes,
    percent,
    sci,
    seconds,
    share,
    share_of_count,
    size,
)
from loratune.model.methods import method_of
from loratune.report import evidence, label_tables, plots
from loratune.report.render import (
    Block,
    Code,
    Figure,
    Figures,
    Heading,
    Table,
    Text,
    render_html,
    render_markdown,
)
from loratune.runs import files
from loratune.runs.folder import RunFolder
from loratune.schema import DataSummary, RunSummary
from loratune.task import Task, task_of

__all__ = ["write_report"]

_SPLITS = ("train", "validation", "test")
PER_LABEL_PLOT = "per_label_f1.png"


def write_report(run_dir: str | Path, trust_unverified: bool = False) -> Path:
    """Render plots, `report.md` and a self-contained `report.html` into a run folder.

    Reads the run folder through `RunFolder` (summary, labels, config and the files beside them). Writes
    `accuracy.png`, `loss.png`, then for a single-label run `confusion_matrix.png` and `per_class_f1.png` (only for
    more than two classes), or for a multi-label run `per_label_f1.png` (a multi-label run has no confusion matrix);
    `reliability.png` (when the folder has a calibration file), `report.md` and `report.html`. Optional values the
    run did not record show as "—".

    Args:
        run_dir: A run folder written by `loratune train`.
        trust_unverified: open it even where its checksum manifest is missing (see `RunFolder`).

    Returns:
        The path of `report.html`.

    Raises:
        RunError: If the folder's summary is missing or damaged, or its label file is damaged.
    """
    # not finished: the recipe writes the report just before COMPLETE
    run = RunFolder.open(run_dir, finished=False, trust_unverified=trust_unverified)
    figures = _write_plots(run)
    title = _title(run)
    blocks = _report_blocks(run, figures, _write_reliability(run))
    files.write_text(run.run_dir / "report.md", render_markdown(title, blocks))
    html_path = run.run_dir / "report.html"
    files.write_text(html_path, render_html(title, blocks, run.run_dir, kicker="loratune · run report", dpi=plots.DPI))
    return html_path


# ---------------------------------------------------------------------------------------------------------------------
# The run report's content, as blocks for loratune.report.render
# ---------------------------------------------------------------------------------------------------------------------


def _title(run: RunFolder) -> str:
    data = run.data_name
    task = run.model_name + (f" on {data}" if data else "")
    if not run.summary.trained:
        return f"Untrained baseline: {task}"
    return f"{method_of(run.summary.method).title} fine-tuning: {task}"


def _write_plots(run: RunFolder) -> list[list[Figure]]:
    """Write the run's PNGs; returns them in rows as the report shows them (the two curves side by side)."""
    summary, task = run.summary, run.task
    curves = []
    for key in ("accuracy", "loss"):
        name = task.accuracy_name if key == "accuracy" else key
        plots.plot_curves(summary, key, run.run_dir / f"{key}.png", name)
        caption = f"{name[:1].upper()}{name[1:]}: train and validation per epoch; epoch 0 is the untrained model"
        curves.append(Figure(f"{key}.png", caption))
    return [curves, *_LABEL_PLOTS_OF_TASK[task.name](run)]


def _label_set_plots(run: RunFolder) -> list[list[Figure]]:
    # Sorted as the per-label table is, so the chart and the table read together.
    summary = run.summary
    shown = label_tables.by_support(summary, run.labels)[: label_tables.SHOWN_LABELS]
    plots.plot_per_label_f1(summary, shown, run.run_dir / PER_LABEL_PLOT)
    caption = f"Per-label F1 before and after training ({summary.eval_split} split), the most frequent labels first"
    return [[Figure(PER_LABEL_PLOT, caption + _of_all(shown, run.labels), wide=len(shown) > 8)]]


def _class_plots(run: RunFolder) -> list[list[Figure]]:
    summary, split, figures = run.summary, run.summary.eval_split, []
    shown = label_tables.shown_labels(summary, run.labels)
    if summary.after.confusion_matrix:
        matrix, totals = _confusion_of(summary.after.confusion_matrix, run.labels, shown)
        plots.plot_confusion(matrix, shown, run.run_dir / "confusion_matrix.png", totals)
        caption = f"Confusion matrix after training ({split} split)" + _of_all(shown, run.labels)
        figures.append([Figure("confusion_matrix.png", caption, wide=True)])
    if len(run.labels) > 2:
        plots.plot_per_class_f1(summary, shown, run.run_dir / "per_class_f1.png")
        caption = f"Per-class F1 before and after training ({split} split)" + _of_all(shown, run.labels)
        figures.append([Figure("per_class_f1.png", caption, wide=len(shown) > 8)])
    return figures


def _confusion_of(matrix: list[list[int]], labels: list[str], shown: list[str]) -> tuple[list[list[int]], list[int]]:
    """The rows and columns of the `shown` labels, and each shown label's whole row total (so that the
    row-normalised panel is still each class's recall, predictions of classes left out included)."""
    index = [labels.index(label) for label in shown]
    return [[matrix[i][j] for j in index] for i in index], [sum(matrix[i]) for i in index]


def _of_all(shown: list[str], labels: list[str]) -> str:
    """A caption's note when a chart shows only the most frequent labels."""
    return "" if len(shown) == len(labels) else f"; the {len(shown)} most frequent of {count(len(labels))} labels"


# What a task plots of its labels: a confusion matrix and per-class F1, or per-label F1.
_LABEL_PLOTS_OF_TASK = {"single": _class_plots, "multi": _label_set_plots}


def _write_reliability(run: RunFolder) -> list[Block]:
    if not run.calibration or not isinstance(run.calibration.get("bins"), dict):
        return []
    plots.plot_reliability(run.calibration["bins"], run.run_dir / "reliability.png", run.task)
    caption = f"Reliability on the {run.summary.eval_split} split: {_RELIABILITY_OF_TASK[run.task.name]}"
    return [Figures([Figure("reliability.png", caption)])]


_RELIABILITY_OF_TASK = {
    "single": "accuracy against confidence, per bin",
    "multi": "fraction true against predicted probability, per bin, over every (text, label) pair",
}


def _report_blocks(run: RunFolder, figures: list[list[Figure]], reliability: list[Block]) -> list[Block]:
    s = run.summary
    blocks: list[Block] = [
        Text(_headline(s, len(run.labels))),
        Heading("Results"),
        label_tables.results_table(s, run.labels),
        label_tables.results_note(s, run.labels),
        Text(_before_and_after(s), muted=True),
        Heading("Significance"),
        *evidence.significance_blocks(s),
        Heading("What changed"),
        *evidence.changes_blocks(s, run.predictions),
        Heading("Confidence"),
        *evidence.confidence_blocks(s, run.calibration),
        *reliability,
        Heading("Plots"),
        *[Figures(row) for row in figures],
        Heading("Training"),
        _training_table(s),
        *label_tables.class_weight_blocks(s, run.labels),
        Heading("Data"),
        *_data_blocks(s.data, run.labels, run.task),
        Heading("Data checks"),
        *evidence.data_check_blocks(run.data_checks),
        *label_tables.per_label_section(s, run.labels, run.thresholds),
        Heading("History"),
        _history_block(s),
    ]
    blocks += [Heading("Configuration"), Text(f"{files.CONFIG_FILE}, as resolved for this run:", muted=True)]
    return [*blocks, Code(run.config_text.rstrip("\n"))]


def _headline(s: RunSummary, num_labels: int) -> str:
    """The one-sentence summary above the tables."""
    where = f"on the {s.eval_split} split ({count(s.after.num_samples)} examples"
    return _HEADLINE_OF_TASK[s.task](s, num_labels, where) + f", trained in {seconds(s.train_seconds)}."


def _label_set_headline(s: RunSummary, num_labels: int, where: str) -> str:
    before, after = s.before, s.after
    return (
        f"Subset accuracy {percent(before.accuracy)} → {percent(after.accuracy)} "
        f"({change(after.accuracy, before.accuracy)}), macro F1 {percent(before.f1)} → {percent(after.f1)} "
        f"({change(after.f1, before.f1)}), micro F1 {percent(before.micro_f1)} → {percent(after.micro_f1)} "
        f"({change(after.micro_f1, before.micro_f1)}) {where}, {count(num_labels)} labels, any number per text)"
    )


def _class_headline(s: RunSummary, num_labels: int, where: str) -> str:
    before, after = s.before, s.after
    return (
        f"Accuracy {percent(before.accuracy)} → {percent(after.accuracy)} "
        f"({change(after.accuracy, before.accuracy)}), macro F1 {percent(before.f1)} → "
        f"{percent(after.f1)} ({change(after.f1, before.f1)}) {where})"
    )


_HEADLINE_OF_TASK = {"single": _class_headline, "multi": _label_set_headline}


def _before_and_after(s: RunSummary) -> str:
    """What the before and after columns measured; an untrained baseline has no best epoch to point to."""
    if not s.trained:
        return (
            f"Before and after: the model as loaded, with a fresh classification head and no training, "
            f"on the {s.eval_split} split."
        )
    text = (
        f"Before: the model as loaded, with a fresh classification head. After: the best epoch "
        f"({s.best_epoch}, by {s.best_metric or DASH}). Both on the {s.eval_split} split."
    )
    if s.after_precision:
        # Which numbers are the model's: evaluate reproduces "after"; an fp32 export may differ by a few texts.
        text += (
            f" After is the saved model scored as `loratune evaluate` scores it (adapter merged, the whole model in "
            f"{s.after_precision}): accuracy {s.after.accuracy:.4f}"
        )
        if s.after_fp32_accuracy is not None:
            text += f"; in fp32, as an export runs it: {s.after_fp32_accuracy:.4f}"
        text += "."
    return text


def _training_table(s: RunSummary) -> Table:
    t = s.throughput
    rows = [
        ["model", s.model or DASH],
        ["method", method_of(s.method).title],
        ["train time", seconds(s.train_seconds)],
        ["epochs", str(len(s.history))],
        ["time per epoch (mean)", seconds(s.seconds_per_epoch)],
        ["best epoch", f"{s.best_epoch} (by {s.best_metric or DASH})" if s.trained else DASH],
        ["trainable params (LoRA only)", share(s.trainable_params_lora, s.total_params)],
        ["trainable params (with head)", share(s.trainable_params, s.total_params)],
        ["total params", count(s.total_params)],
        ["peak memory", megabytes(s.peak_memory_mb)],
        ["adapter size on disk", size(s.adapter_size_bytes)],
        ["precision / device", f"{s.precision or DASH} / {s.device or DASH}"],
        ["train throughput", fixed(t.train_samples_per_s, digits=1, unit="samples/s")],
        ["train throughput (tokens)", fixed(t.train_tokens_per_s, digits=1, unit="tokens/s")],
        ["eval throughput", fixed(t.eval_samples_per_s, digits=1, unit="samples/s")],
        ["padding ratio", fixed(t.padding_ratio, digits=2)],
        ["CPU threads", _threads(t.threads)],
        ["class weights", "see below" if s.class_weights else "none"],
    ]
    return Table(["training", "value"], rows, align="ll", key_value=True)


def _threads(used: list[int] | None) -> str:
    if not used:
        return DASH
    if len(used) == 1:
        return str(used[0])
    return f"{', '.join(map(str, used))} (followed the free cores; --deterministic keeps one)"


def _data_blocks(data: DataSummary, labels: list[str], task: Task) -> list[Block]:
    split_sizes = {split: getattr(data, f"{split}_size") for split in _SPLITS}
    sizes = Table(
        ["split", "examples", "truncated"],
        [[split, count(n), share_of_count(data.truncated.get(split), n)] for split, n in split_sizes.items()],
    )
    # Past SHOWN_LABELS labels, the ones with the most training examples.
    train_counts = data.label_counts.get("train", {})
    shown = (
        sorted(labels, key=lambda x: -train_counts.get(x, 0)) if len(labels) > label_tables.SHOWN_LABELS else labels
    )
    shown = shown[: label_tables.SHOWN_LABELS]
    label_rows = [
        [label, *[share_of_count(data.label_counts.get(split, {}).get(label), n) for split, n in split_sizes.items()]]
        for label in shown
    ]
    max_length = DASH if data.max_length is None else data.max_length
    left_out = len(labels) - len(shown)
    return [
        Text(f"Examples per split; truncated counts texts longer than {max_length} tokens.", True),
        sizes,
        Text(_DISTRIBUTION_OF_TASK[task.name], muted=True),
        Table(["label", *_SPLITS], label_rows),
        *(
            [Text(f"The {len(shown)} labels with the most training examples, of {count(len(labels))}.", True)]
            if left_out
            else []
        ),
    ]


_DISTRIBUTION_OF_TASK = {
    "single": "Label distribution per split:",
    "multi": "Texts carrying each label, per split (a text can carry several):",
}


def _history_block(s: RunSummary) -> Block:
    if not s.history:
        return Text(f"{DASH} (no training epochs; this run only evaluates the model as loaded)", muted=True)
    rows = []
    for h in s.history:
        marker = " ★" if h.epoch == s.best_epoch else ""
        losses = [fixed(h.train_loss), percent(h.train_accuracy), fixed(h.val_loss)]
        scores = [percent(h.val_accuracy), percent(h.val_precision), percent(h.val_recall), percent(h.val_f1)]
        rows.append([f"{h.epoch}{marker}", *losses, *scores, sci(h.learning_rate), seconds(h.epoch_seconds)])
    val_accuracy = "val " + task_of(s.task).accuracy_name.replace("accuracy", "acc")
    header = ["epoch", "train loss", "train acc", "val loss", val_accuracy, "val prec", "val recall", "val F1", "LR"]
    return Table([*header, "time"], rows)
