"""report.md and report.html for a run folder, with their plots.

Everything here is rendered from the files a run leaves on disk (see docs/run-folder.md), read through
`loratune.runs.files`, so a report can be rebuilt, moved or tested without a model. This module decides what a
report says, as one list of blocks; `loratune.report.render` turns that list into both the Markdown and the HTML, which
keeps the two outputs in step. The plots are drawn by `loratune.report.plots`, numbers are written by
`loratune.formatting`, what is said about the labels (which depends on the task: single- or multi-label) by
`loratune.report.label_tables`, and the side-by-side comparison of several runs lives in `loratune.training.compare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loratune.formatting import (
    DASH,
    change,
    count,
    fixed,
    megabytes,
    method_name,
    percent,
    sci,
    seconds,
    share,
    share_of_count,
    short_name,
    size,
)
from loratune.report import evidence, label_tables, plots
from loratune.report.label_tables import is_multi_label
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
from loratune.schema import DataSummary, RunSummary

__all__ = ["RunFolder", "read_run_folder", "write_report"]

_SPLITS = ("train", "validation", "test")
PER_LABEL_PLOT = "per_label_f1.png"


def write_report(run_dir: str | Path) -> Path:
    """Render plots, `report.md` and a self-contained `report.html` into a run folder.

    Reads the run's summary, labels and, when present, config (through `artifacts`). Writes
    `accuracy.png`, `loss.png`, then for a single-label run `confusion_matrix.png` and `per_class_f1.png` (only for
    more than two classes), or for a multi-label run `per_label_f1.png` (a multi-label run has no confusion matrix);
    `reliability.png` (when the folder has a calibration file), `report.md` and `report.html`. Optional values the
    run did not record show as "—".

    Args:
        run_dir: A run folder written by `loratune train`.

    Returns:
        The path of `report.html`.

    Raises:
        RunError: If the folder's summary is missing or damaged, or its label file is damaged.
    """
    run = read_run_folder(Path(run_dir))
    figures = _write_plots(run)
    title = _title(run)
    blocks = _report_blocks(run, figures, _write_reliability(run))
    files.write_text(run.dir / "report.md", render_markdown(title, blocks))
    html_path = run.dir / "report.html"
    files.write_text(html_path, render_html(title, blocks, run.dir, kicker="loratune · run report", dpi=plots.DPI))
    return html_path


# ---------------------------------------------------------------------------------------------------------------------
# Reading a run folder
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFolder:
    """What a report shows of a run folder: its summary, its label names and its config.

    Attributes:
        dir: The run folder.
        summary: The run's summary (`files.METRICS_FILE`).
        labels: The label names, in the order of the confusion matrix.
        config_text: The config file as written, or None when the folder has none.
        config: The config file parsed; empty when it is missing or does not parse.
        predictions: The predictions table (`files.PREDICTIONS_FILE`), None in an older folder.
        calibration: The calibration file (temperature, reliability bins), None in an older folder.
        data_checks: The data checks file, None in an older folder.
        thresholds: A multi-label run's decision thresholds in label order; None for a single-label run.
    """

    dir: Path
    summary: RunSummary
    labels: list[str]
    config_text: str | None
    config: dict[str, Any]
    predictions: Any = None
    calibration: dict[str, Any] | None = None
    data_checks: dict[str, Any] | None = None
    thresholds: list[float] | None = None

    @property
    def model_name(self) -> str:
        return short_name(self.summary.model_name or self.summary.model)

    @property
    def data_name(self) -> str | None:
        """The data set's short name, with its subset when the config names one; None when unknown."""
        data = self.config.get("data")
        data = data if isinstance(data, dict) else {}
        path = data.get("path") or self.summary.data.source
        if not path:
            return None
        subset = data.get("subset")
        return f"{short_name(path)}/{subset}" if subset else short_name(path)


def read_run_folder(run_dir: Path) -> RunFolder:
    """Read what a report needs from a run folder.

    Raises:
        RunError: If the summary is missing or damaged, or the label file is damaged.
    """
    summary = files.load_summary(run_dir)
    if (run_dir / files.LABELS_FILE).is_file():
        labels = files.load_labels(run_dir)
    else:
        # The label file is the source of truth, but the summary repeats the names, so an older folder still renders.
        labels = summary.labels or list(summary.after.per_class)
    config_path = run_dir / files.CONFIG_FILE
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    try:
        config = yaml.safe_load(config_text) if config_text else {}
    except yaml.YAMLError:
        config = {}  # the raw text is still shown; only the data name in the title is lost
    return RunFolder(
        run_dir,
        summary,
        labels,
        config_text,
        config if isinstance(config, dict) else {},
        predictions=files.load_predictions(run_dir),
        calibration=files.load_calibration(run_dir),
        data_checks=files.load_data_checks(run_dir),
        thresholds=files.load_thresholds(run_dir, labels),
    )


# ---------------------------------------------------------------------------------------------------------------------
# The run report's content, as blocks for loratune.report.render
# ---------------------------------------------------------------------------------------------------------------------


def _title(run: RunFolder) -> str:
    data = run.data_name
    task = run.model_name + (f" on {data}" if data else "")
    if not run.summary.trained:
        return f"Untrained baseline: {task}"
    return f"{method_name(run.summary.method)} fine-tuning: {task}"


def _write_plots(run: RunFolder) -> list[list[Figure]]:
    """Write the run's PNGs; returns them in rows as the report shows them (the two curves side by side)."""
    summary, split = run.summary, run.summary.eval_split
    multi = is_multi_label(summary)
    curves = []
    for key in ("accuracy", "loss"):
        name = "subset accuracy" if multi and key == "accuracy" else key
        plots.plot_curves(summary, key, run.dir / f"{key}.png", name)
        caption = f"{name[:1].upper()}{name[1:]}: train and validation per epoch; epoch 0 is the untrained model"
        curves.append(Figure(f"{key}.png", caption))
    figures = [curves]
    if multi:
        # Sorted as the per-label table is, so the chart and the table read together.
        plots.plot_per_label_f1(summary, label_tables.by_support(summary, run.labels), run.dir / PER_LABEL_PLOT)
        caption = f"Per-label F1 before and after training ({split} split), the most frequent labels first"
        figures.append([Figure(PER_LABEL_PLOT, caption, wide=len(run.labels) > 8)])
        return figures
    if summary.after.confusion_matrix:
        plots.plot_confusion(summary.after.confusion_matrix, run.labels, run.dir / "confusion_matrix.png")
        figures.append([Figure("confusion_matrix.png", f"Confusion matrix after training ({split} split)", wide=True)])
    if len(run.labels) > 2:
        plots.plot_per_class_f1(summary, run.labels, run.dir / "per_class_f1.png")
        caption = f"Per-class F1 before and after training ({split} split)"
        figures.append([Figure("per_class_f1.png", caption, wide=len(run.labels) > 8)])
    return figures


def _write_reliability(run: RunFolder) -> list[Block]:
    if not run.calibration or not isinstance(run.calibration.get("bins"), dict):
        return []
    multi = is_multi_label(run.summary)
    plots.plot_reliability(run.calibration["bins"], run.dir / "reliability.png", multi_label=multi)
    if multi:
        what = "fraction true against predicted probability, per bin, over every (text, label) pair"
    else:
        what = "accuracy against confidence, per bin"
    caption = f"Reliability on the {run.summary.eval_split} split: {what}"
    return [Figures([Figure("reliability.png", caption)])]


def _report_blocks(run: RunFolder, figures: list[list[Figure]], reliability: list[Block]) -> list[Block]:
    s = run.summary
    multi = is_multi_label(s)
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
        *_data_blocks(s.data, run.labels, multi),
        Heading("Data checks"),
        *evidence.data_check_blocks(run.data_checks),
        *(
            [Heading("Per label"), *label_tables.per_label_blocks(s, run.labels, run.thresholds)]
            if multi
            else [Heading("Per class"), label_tables.per_class_table(s, run.labels)]
        ),
        Heading("History"),
        _history_block(s),
    ]
    if run.config_text is not None:
        blocks += [Heading("Configuration"), Text(f"{files.CONFIG_FILE}, as resolved for this run:", muted=True)]
        blocks.append(Code(run.config_text.rstrip("\n")))
    return blocks


def _headline(s: RunSummary, num_labels: int) -> str:
    """The one-sentence summary above the tables."""
    before, after = s.before, s.after
    where = f"on the {s.eval_split} split ({count(after.num_samples)} examples"
    trained = f"trained in {seconds(s.train_seconds)}."
    if is_multi_label(s):
        return (
            f"Subset accuracy {percent(before.accuracy)} → {percent(after.accuracy)} "
            f"({change(after.accuracy, before.accuracy)}), macro F1 {percent(before.f1)} → {percent(after.f1)} "
            f"({change(after.f1, before.f1)}), micro F1 {percent(before.micro_f1)} → {percent(after.micro_f1)} "
            f"({change(after.micro_f1, before.micro_f1)}) {where}, {count(num_labels)} labels, any number per "
            f"text), {trained}"
        )
    return (
        f"Accuracy {percent(before.accuracy)} → {percent(after.accuracy)} "
        f"({change(after.accuracy, before.accuracy)}), macro F1 {percent(before.f1)} → "
        f"{percent(after.f1)} ({change(after.f1, before.f1)}) {where}), {trained}"
    )


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
        ["method", method_name(s.method)],
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
        ["class weights", "see below" if s.class_weights else "none"],
    ]
    return Table(["training", "value"], rows, align="ll", key_value=True)


def _data_blocks(data: DataSummary, labels: list[str], multi: bool) -> list[Block]:
    if data == DataSummary():
        # A summary written before runs recorded their data loads with every field at its default.
        return [Text(f"{DASH} ({files.METRICS_FILE} has no data summary)", muted=True)]
    split_sizes = {split: getattr(data, f"{split}_size") for split in _SPLITS}
    sizes = Table(
        ["split", "examples", "truncated"],
        [[split, count(n), share_of_count(data.truncated.get(split), n)] for split, n in split_sizes.items()],
    )
    label_rows = [
        [label, *[share_of_count(data.label_counts.get(split, {}).get(label), n) for split, n in split_sizes.items()]]
        for label in labels
    ]
    max_length = DASH if data.max_length is None else data.max_length
    return [
        Text(f"Examples per split; truncated counts texts longer than {max_length} tokens.", True),
        sizes,
        Text(
            "Texts carrying each label, per split (a text can carry several):"
            if multi
            else "Label distribution per split:",
            muted=True,
        ),
        Table(["label", *_SPLITS], label_rows),
    ]


def _history_block(s: RunSummary) -> Block:
    if not s.history:
        return Text(f"{DASH} (no training epochs; this run only evaluates the model as loaded)", muted=True)
    rows = []
    for h in s.history:
        marker = " ★" if h.epoch == s.best_epoch else ""
        losses = [fixed(h.train_loss), percent(h.train_accuracy), fixed(h.val_loss)]
        scores = [percent(h.val_accuracy), percent(h.val_precision), percent(h.val_recall), percent(h.val_f1)]
        rows.append([f"{h.epoch}{marker}", *losses, *scores, sci(h.learning_rate), seconds(h.epoch_seconds)])
    val_accuracy = "val subset acc" if is_multi_label(s) else "val acc"
    header = ["epoch", "train loss", "train acc", "val loss", val_accuracy, "val prec", "val recall", "val F1", "LR"]
    return Table([*header, "time"], rows)
