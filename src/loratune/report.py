"""Plots, report.md and report.html for a run folder, and a side-by-side comparison of several runs.

Everything here is rendered from the files a run leaves on disk (see docs/run-folder.md), so a report can be
rebuilt, moved or tested without a model. This module decides what a report says, as one list of blocks;
`loratune.render` turns that list into both the Markdown and the HTML, which keeps the two outputs in step.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from loratune.errors import RunError
from loratune.render import Block, Code, Figure, Figures, Heading, Table, Text, render_html, render_markdown

__all__ = ["write_report", "write_comparison"]

_DASH = "—"
_DPI = 130
_METRICS = (
    ("accuracy", "accuracy"),
    ("precision", "precision (macro)"),
    ("recall", "recall (macro)"),
    ("f1", "F1 (macro)"),
)
_METHOD_NAMES = {"lora": "LoRA", "dora": "DoRA", "head": "Head-only", "full": "Full", "base": "Base"}
_COLORS = {"train": "#f08c00", "validation": "#3b5bdb", "before": "#495057", "after": "#2f9e44", "best": "#adb5bd"}
_SPLITS = ("train", "validation", "test")


# ---------------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------------


def write_report(run_dir: str | Path) -> Path:
    """Render plots, `report.md` and a self-contained `report.html` into a run folder.

    Reads `metrics.json`, `labels.json` and, when present, `config.yaml`. Writes `accuracy.png`, `loss.png`,
    `confusion_matrix.png`, `per_class_f1.png` (only for more than two classes), `report.md` and `report.html`.
    Optional metrics keys that are missing show as "—".

    Args:
        run_dir: A run folder written by `loratune train`.

    Returns:
        The path of `report.html`.

    Raises:
        RunError: If the folder has no `metrics.json`.
    """
    run = _load_run(Path(run_dir))
    figures = _write_run_plots(run)
    title = _report_title(run)
    blocks = _report_blocks(run, figures)
    (run.dir / "report.md").write_text(render_markdown(title, blocks), encoding="utf-8")
    html_path = run.dir / "report.html"
    html_path.write_text(
        render_html(title, blocks, run.dir, kicker="loratune · run report", dpi=_DPI), encoding="utf-8"
    )
    return html_path


def write_comparison(output_dir: str | Path, runs: dict[str, str | Path]) -> Path:
    """Compare several runs of the same task, one row per method.

    Writes `comparison.json` (a list of rows with the keys method, accuracy, precision, recall, f1, train_seconds,
    seconds_per_epoch, trainable_params, trainable_percent, total_params, peak_memory_mb, artifact_size_bytes,
    best_epoch and run_dir), `comparison_val_accuracy.png`, `comparison_accuracy_vs_time.png`, `comparison.md` and a
    self-contained `comparison.html`.

    Args:
        output_dir: Folder to write into; created if needed.
        runs: Method name ("base", "head", "lora", "full", ...) to its run folder, in display order.

    Returns:
        The path of `comparison.html`.

    Raises:
        RunError: If a run folder has no `metrics.json`.
        ValueError: If `runs` is empty.
    """
    if not runs:
        raise ValueError("write_comparison needs at least one run folder; got none.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    loaded = {method: _load_run(Path(path)) for method, path in runs.items()}
    rows = [_comparison_row(method, run, output_dir) for method, run in loaded.items()]
    (output_dir / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")

    figures = [
        _plot_comparison_curves(loaded, output_dir / "comparison_val_accuracy.png"),
        _plot_accuracy_vs_time(rows, output_dir / "comparison_accuracy_vs_time.png"),
    ]
    title = "Method comparison"
    blocks = _comparison_blocks(loaded, rows, figures)
    (output_dir / "comparison.md").write_text(render_markdown(title, blocks), encoding="utf-8")
    html_path = output_dir / "comparison.html"
    html_path.write_text(
        render_html(title, blocks, output_dir, kicker="loratune · comparison", dpi=_DPI), encoding="utf-8"
    )
    return html_path


# ---------------------------------------------------------------------------------------------------------------------
# Reading a run folder
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    dir: Path
    metrics: dict[str, Any]
    labels: list[str]
    config_text: str | None
    config: dict[str, Any]

    @property
    def history(self) -> list[dict[str, Any]]:
        return [h for h in self.metrics.get("history") or [] if isinstance(h, dict)]

    @property
    def best_epoch(self) -> int | None:
        best = _finite(self.metrics.get("best_epoch"))
        return None if best is None else int(best)

    @property
    def split(self) -> str:
        return str(self.metrics.get("eval_split") or "eval")


def _load_run(run_dir: Path) -> _Run:
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise RunError(f"{run_dir} has no metrics.json; is it a loratune run folder? Train one with `loratune train`.")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    labels_path = run_dir / "labels.json"
    if labels_path.is_file():
        labels = json.loads(labels_path.read_text(encoding="utf-8"))
    else:
        # labels.json is the source of truth, but metrics.json repeats the names, so an older folder still renders.
        labels = metrics.get("labels") or list((_get(metrics, "after", "per_class") or {}).keys())
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    try:
        config = yaml.safe_load(config_text) if config_text else {}
    except yaml.YAMLError:
        config = {}  # the raw text is still shown; only the data name in the title is lost
    return _Run(
        run_dir, metrics, [str(label) for label in labels], config_text, config if isinstance(config, dict) else {}
    )


def _get(mapping: Any, *keys: str) -> Any:
    """`mapping[k1][k2]...`, or None where any level is missing."""
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [v for v in map(_finite, values) if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


def _seconds_per_epoch(run: _Run) -> float | None:
    return _mean(h.get("epoch_seconds") for h in run.history)


def _model_name(model: Any) -> str:
    """A hub id stays as is; a local path shows only its last folder, which keeps titles short and portable."""
    if not model:
        return _DASH
    text = str(model)
    if text.startswith(("/", ".", "~", "…")) or "\\" in text or re.match(r"^[A-Za-z]:", text):
        return Path(text.replace("\\", "/")).name or text
    return text


def _data_name(run: _Run) -> str | None:
    path = _get(run.config, "data", "path") or _get(run.metrics, "data", "path")
    if not path:
        return None
    name = _model_name(path)
    subset = _get(run.config, "data", "subset")
    return f"{name}/{subset}" if subset else name


def _method_name(method: Any) -> str:
    return _METHOD_NAMES.get(str(method).lower(), str(method)) if method else "LoRA"


# ---------------------------------------------------------------------------------------------------------------------
# Number formatting: every helper turns a missing or non-finite value into "—"
# ---------------------------------------------------------------------------------------------------------------------


def _pct(value: Any, digits: int = 1) -> str:
    v = _finite(value)
    return _DASH if v is None else f"{100 * v:.{digits}f}%"


def _pp(after: Any, before: Any) -> str:
    a, b = _finite(after), _finite(before)
    return _DASH if a is None or b is None else f"{100 * (a - b):+.1f} pp"


def _count(value: Any) -> str:
    v = _finite(value)
    return _DASH if v is None else f"{round(v):,}"


def _fixed(value: Any, digits: int = 3) -> str:
    v = _finite(value)
    return _DASH if v is None else f"{v:,.{digits}f}"


def _sci(value: Any) -> str:
    v = _finite(value)
    return _DASH if v is None else f"{v:.2e}"


def _seconds(value: Any) -> str:
    v = _finite(value)
    if v is None:
        return _DASH
    return f"{v:,.1f} s" if v < 120 else f"{v:,.0f} s ({v / 60:.1f} min)"


def _megabytes(value: Any) -> str:
    v = _finite(value)
    return _DASH if v is None else f"{v:,.1f} MB"


def _size(value: Any) -> str:
    v = _finite(value)
    if v is None:
        return _DASH
    if abs(v) < 1024:
        return f"{v:,.0f} B"
    exponent = min(int(math.log(abs(v), 1024)), 3)
    return f"{v / 1024**exponent:,.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


def _share(part: Any, total: Any) -> str:
    """'296,450 (1.30%)': a parameter count with its share of the total."""
    p, t = _finite(part), _finite(total)
    if p is None:
        return _DASH
    if t is None or t <= 0:
        return _count(p)
    percent = 100 * p / t
    return f"{_count(p)} ({'<0.01' if 0 < percent < 0.01 else f'{percent:.2f}'}%)"


def _share_of_count(part: Any, total: Any) -> str:
    """'1,800 (45.0%)': a row count with its share of the split."""
    p, t = _finite(part), _finite(total)
    if p is None:
        return _DASH
    return _count(p) if not t else f"{_count(p)} ({100 * p / t:.1f}%)"


# ---------------------------------------------------------------------------------------------------------------------
# Plots. Figures are built with the object API on an Agg canvas, so no global pyplot state or GUI backend is touched.
# ---------------------------------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> MplFigure:
    figure = MplFigure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: MplFigure, path: Path) -> None:
    # No Software/date metadata, so identical inputs give byte-identical PNGs.
    figure.savefig(path, dpi=_DPI, facecolor="white", metadata={"Software": None})


def _mpl(text: str) -> str:
    """Escape '$' so a label like '$5' is not read as mathtext."""
    return str(text).replace("$", r"\$")


def _short(text: str, limit: int = 18) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _style_axes(ax: Any, percent: bool) -> None:
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _write_run_plots(run: _Run) -> list[list[Figure]]:
    """Write the run's PNGs; returns them in rows as the report shows them (the two curves side by side)."""
    split = run.split
    rows = [[_plot_curves(run, "accuracy", run.dir / "accuracy.png"), _plot_curves(run, "loss", run.dir / "loss.png")]]
    matrix = _get(run.metrics, "after", "confusion_matrix")
    if isinstance(matrix, list) and matrix:
        _plot_confusion(matrix, run.labels, run.dir / "confusion_matrix.png")
        rows.append([Figure("confusion_matrix.png", f"Confusion matrix after training ({split} split)", wide=True)])
    if len(run.labels) > 2:
        _plot_per_class_f1(run, run.dir / "per_class_f1.png")
        caption = f"Per-class F1 before and after training ({split} split)"
        rows.append([Figure("per_class_f1.png", caption, wide=len(run.labels) > 8)])
    return rows


def _plot_curves(run: _Run, key: str, path: Path) -> Figure:
    """Train and validation `key` per epoch; the untrained score sits at epoch 0 and the best epoch is marked."""
    history = run.history
    split = run.split
    # Small on purpose: two of these sit side by side in the HTML, and a small figure keeps its text legible there.
    figure = _new_figure(5.2, 3.5)
    ax = figure.add_subplot()
    epochs = [_finite(h.get("epoch")) or i + 1 for i, h in enumerate(history)]
    train = _points(epochs, [h.get(f"train_{key}") for h in history])
    val = _points(epochs, [h.get(f"val_{key}") for h in history])
    before = _finite(_get(run.metrics, "before", key))
    after = _finite(_get(run.metrics, "after", key))
    best = run.best_epoch

    if train[0]:
        ax.plot(*train, marker="o", color=_COLORS["train"], label="train")
    if val[0]:
        ax.plot(*val, marker="o", color=_COLORS["validation"], label="validation")
    if before is not None:
        if val[0]:
            # Dotted, because the before score is measured on the eval split, not on validation.
            ax.plot([0, val[0][0]], [before, val[1][0]], linestyle=":", color=_COLORS["validation"])
        marker = {"marker": "D", "markersize": 8, "linestyle": "none", "color": _COLORS["before"]}
        ax.plot([0], [before], **marker, label=f"before ({split})")
    if best is not None and history:
        ax.axvline(best, linestyle="--", color=_COLORS["best"], label=f"best epoch ({best})")
        if after is not None:
            marker = {"marker": "*", "markersize": 15, "linestyle": "none", "color": _COLORS["after"]}
            ax.plot([best], [after], **marker, label=f"after ({split})")
    if not (train[0] or val[0] or before is not None):
        ax.text(0.5, 0.5, f"no {key} recorded", ha="center", va="center", transform=ax.transAxes, color="#868e96")

    last = max([0.0, *epochs])
    ax.set_xlim(-0.4, last + 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(f"{key.capitalize()} per epoch")
    _style_axes(ax, percent=key == "accuracy")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, framealpha=0.9)
    _save(figure, path)
    return Figure(path.name, f"{key.capitalize()}: train and validation per epoch; epoch 0 is the untrained model")


def _points(xs: Sequence[float], ys: Sequence[Any]) -> tuple[list[float], list[float]]:
    """The (x, y) pairs whose y is a finite number, as the two lists `Axes.plot` takes."""
    kept = [(x, y) for x, y in zip(xs, map(_finite, ys), strict=True) if y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def _plot_confusion(matrix: list[list[Any]], labels: Sequence[str], path: Path) -> None:
    """Counts and row-normalised matrices side by side; rows are true labels, columns predictions."""
    counts = [[_finite(c) or 0.0 for c in row] for row in matrix]
    n = len(counts)
    names = [_mpl(_short(label)) for label in (list(labels) + [str(i) for i in range(len(labels), n)])[:n]]
    normalised = [[c / sum(row) if sum(row) else 0.0 for c in row] for row in counts]

    side = min(max(3.4, 0.42 * n + 1.8), 11.0)
    # Past ten classes the panels are stacked, so each one gets the full page width and its numbers stay legible.
    stacked = n > 10
    figure = _new_figure(side + 1.0, 2 * side + 0.6) if stacked else _new_figure(2 * side + 1.0, side + 0.4)
    axes = figure.subplots(2, 1) if stacked else figure.subplots(1, 2)
    annotate = n <= 25
    font = 10 if n <= 6 else 8 if n <= 12 else 7
    tick_font = 9 if n <= 10 else 7
    panels = (
        (axes[0], counts, "Counts", lambda v: f"{v:,.0f}"),
        (axes[1], normalised, "Row-normalised (recall)", lambda v: f"{100 * v:.0f}%" if n > 6 else f"{100 * v:.1f}%"),
    )
    for ax, values, title, fmt in panels:
        top = max((v for row in values for v in row), default=0.0) or 1.0
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        ax.set_title(title)
        ax.set_xticks(range(n), names, fontsize=tick_font, **_slanted(n > 2))
        ax.set_yticks(range(n), names, fontsize=tick_font)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if annotate:
            for i, row in enumerate(values):
                for j, v in enumerate(row):
                    color = "white" if v > 0.55 * top else "#1f2328"
                    ax.text(j, i, fmt(v), ha="center", va="center", fontsize=font, color=color)
        figure.colorbar(image, ax=ax, shrink=0.8)
    _save(figure, path)


def _slanted(slant: bool) -> dict[str, Any]:
    """Tick-label options: long or many labels are rotated so they don't overlap."""
    return {"rotation": 45, "ha": "right"} if slant else {"rotation": 0, "ha": "center"}


def _plot_per_class_f1(run: _Run, path: Path) -> None:
    labels = run.labels
    before = [_finite(_get(run.metrics, "before", "per_class", label, "f1")) for label in labels]
    after = [_finite(_get(run.metrics, "after", "per_class", label, "f1")) for label in labels]
    n = len(labels)
    figure = _new_figure(min(max(6.4, 0.55 * n + 2.0), 16.0), 4.2)
    ax = figure.add_subplot()
    positions = list(range(n))
    # A missing score draws as an empty bar rather than failing the whole report.
    ax.bar([p - 0.2 for p in positions], [v or 0.0 for v in before], 0.4, color=_COLORS["best"], label="before")
    ax.bar([p + 0.2 for p in positions], [v or 0.0 for v in after], 0.4, color=_COLORS["validation"], label="after")
    slant = n > 6 or max(map(len, labels), default=0) > 8
    ax.set_xticks(positions, [_mpl(_short(label)) for label in labels], **_slanted(slant))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title(f"Per-class F1 ({run.split} split)")
    _style_axes(ax, percent=True)
    ax.legend(fontsize=8, framealpha=0.9)
    _save(figure, path)


def _plot_comparison_curves(runs: dict[str, _Run], path: Path) -> Figure:
    """Validation accuracy per method; untrained runs (no history) are horizontal dashed lines."""
    figure = _new_figure(6.0, 3.8)
    ax = figure.add_subplot()
    last_epoch = 1.0
    flat: list[tuple[str, float]] = []
    colors = _method_colors(runs)
    for method, run in runs.items():
        history = run.history
        if not history:
            accuracy = _finite(_get(run.metrics, "after", "accuracy"))
            if accuracy is not None:
                flat.append((method, accuracy))
            continue
        epochs = [0.0] + [_finite(h.get("epoch")) or i + 1 for i, h in enumerate(history)]
        scores = [_get(run.metrics, "before", "accuracy")] + [h.get("val_accuracy") for h in history]
        xs, ys = _points(epochs, scores)
        last_epoch = max([last_epoch, *xs])
        if xs:
            ax.plot(xs, ys, marker="o", color=colors[method], label=_mpl(method))
    for method, accuracy in flat:
        ax.axhline(accuracy, linestyle="--", color=colors[method], label=_mpl(f"{method} ({_pct(accuracy)})"))
    ax.set_xlim(-0.3, last_epoch + 0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Validation accuracy per epoch")
    _style_axes(ax, percent=True)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, framealpha=0.9)
    _save(figure, path)
    return Figure(path.name, "Validation accuracy per epoch; epoch 0 is each run's untrained score")


def _plot_accuracy_vs_time(rows: list[dict[str, Any]], path: Path) -> Figure:
    figure = _new_figure(6.0, 3.8)
    ax = figure.add_subplot()
    colors = _method_colors({row["method"]: None for row in rows})
    for row in rows:
        x, y = _finite(row["train_seconds"]), _finite(row["accuracy"])
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=60, color=colors[row["method"]], zorder=3)
        ax.annotate(_mpl(row["method"]), (x, y), xytext=(6, 5), textcoords="offset points", fontsize=9)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("accuracy after training")
    ax.set_title("Accuracy vs training time")
    ax.margins(x=0.15, y=0.15)
    _style_axes(ax, percent=True)
    _save(figure, path)
    return Figure(path.name, "Accuracy after training against training time, one point per method")


def _method_colors(methods: Iterable[str]) -> dict[str, str]:
    """One colour per method, the same in every comparison plot; the untrained base run is grey."""
    palette = ["#3b5bdb", "#f08c00", "#2f9e44", "#e03131", "#9c36b5", "#1098ad", "#5c940d", "#d6336c"]
    trained = [m for m in methods if m != "base"]
    colors = {m: palette[i % len(palette)] for i, m in enumerate(trained)}
    return {**colors, "base": _COLORS["before"]}


# ---------------------------------------------------------------------------------------------------------------------
# Document content: what a report and a comparison say, as blocks for loratune.render
# ---------------------------------------------------------------------------------------------------------------------


def _report_title(run: _Run) -> str:
    data = _data_name(run)
    model = _model_name(run.metrics.get("model_name") or run.metrics.get("model"))
    task = model + (f" on {data}" if data else "")
    if str(run.metrics.get("method")).lower() == "base":
        return f"Untrained baseline: {task}"
    return f"{_method_name(run.metrics.get('method'))} fine-tuning: {task}"


def _report_blocks(run: _Run, figures: list[list[Figure]]) -> list[Block]:
    m = run.metrics
    before, after = m.get("before") or {}, m.get("after") or {}
    samples = _count(after.get("num_samples"))
    blocks: list[Block] = [
        Text(
            f"Accuracy {_pct(before.get('accuracy'))} → {_pct(after.get('accuracy'))} "
            f"({_pp(after.get('accuracy'), before.get('accuracy'))}), macro F1 {_pct(before.get('f1'))} → "
            f"{_pct(after.get('f1'))} ({_pp(after.get('f1'), before.get('f1'))}) on the {run.split} split "
            f"({samples} examples), trained in {_seconds(m.get('train_seconds'))}."
        ),
        Heading("Results"),
        Table(
            ["metric", "before", "after", "change"],
            [
                [name, _pct(before.get(k)), _pct(after.get(k)), _pp(after.get(k), before.get(k))]
                for k, name in _METRICS
            ],
            signed=(3,),
        ),
        Text(
            f"Before: the model as loaded, with a fresh classification head. After: the best epoch "
            f"({m.get('best_epoch', _DASH)}, by {m.get('best_metric') or _DASH}). Both on the {run.split} split.",
            muted=True,
        ),
        Heading("Plots"),
        *[Figures(row) for row in figures],
        Heading("Training"),
        _training_table(run),
        Heading("Data"),
        *_data_blocks(run),
        Heading("Per class"),
        _per_class_table(run),
        Heading("History"),
        _history_block(run),
    ]
    if run.config_text is not None:
        blocks += [Heading("Configuration"), Text("config.yaml, as resolved for this run:", muted=True)]
        blocks.append(Code(run.config_text.rstrip("\n")))
    return blocks


def _training_table(run: _Run) -> Table:
    m = run.metrics
    total = m.get("total_params")
    best = (
        f"{m['best_epoch']} (by {m.get('best_metric') or _DASH})"
        if _finite(m.get("best_epoch")) is not None
        else _DASH
    )
    precision_device = " / ".join(str(m.get(k) or _DASH) for k in ("precision", "device"))
    throughput = m.get("throughput") if isinstance(m.get("throughput"), dict) else {}
    rows = [
        ["model", str(m.get("model") or _DASH)],
        ["method", _method_name(m.get("method"))],
        ["train time", _seconds(m.get("train_seconds"))],
        ["epochs", str(len(run.history))],
        ["time per epoch (mean)", _seconds(_seconds_per_epoch(run))],
        ["best epoch", best],
        ["trainable params (LoRA only)", _share(m.get("trainable_params_lora"), total)],
        ["trainable params (with head)", _share(m.get("trainable_params"), total)],
        ["total params", _count(total)],
        ["peak memory", _megabytes(m.get("peak_memory_mb"))],
        ["adapter size on disk", _size(m.get("adapter_size_bytes"))],
        ["precision / device", precision_device],
        ["train throughput", _rate(throughput.get("train_samples_per_s"), "samples/s")],
        ["train throughput (tokens)", _rate(throughput.get("train_tokens_per_s"), "tokens/s")],
        ["eval throughput", _rate(throughput.get("eval_samples_per_s"), "samples/s")],
        ["padding ratio", _fixed(throughput.get("padding_ratio"), 2)],
    ]
    return Table(["training", "value"], rows, align="ll", key_value=True)


def _rate(value: Any, unit: str) -> str:
    text = _fixed(value, 1)
    return text if text == _DASH else f"{text} {unit}"


def _data_blocks(run: _Run) -> list[Block]:
    data = run.metrics.get("data")
    if not isinstance(data, dict):
        return [Text(f"{_DASH} (metrics.json has no data summary)", muted=True)]
    counts = data.get("label_counts") if isinstance(data.get("label_counts"), dict) else {}
    truncated = data.get("truncated") if isinstance(data.get("truncated"), dict) else {}
    splits = [s for s in _SPLITS if f"{s}_size" in data or s in counts] or list(_SPLITS)
    sizes = Table(
        ["split", "examples", "truncated"],
        [[s, _count(data.get(f"{s}_size")), _share_of_count(truncated.get(s), data.get(f"{s}_size"))] for s in splits],
    )
    label_rows = []
    for label in run.labels:
        cells = [_share_of_count(_get(counts, s, label), data.get(f"{s}_size")) for s in splits]
        label_rows.append([label, *cells])
    return [
        Text(f"Examples per split; truncated counts texts longer than {data.get('max_length', _DASH)} tokens.", True),
        sizes,
        Text("Label distribution per split:", muted=True),
        Table(["label", *splits], label_rows),
    ]


def _per_class_table(run: _Run) -> Table:
    rows = []
    for label in run.labels:
        a = _get(run.metrics, "after", "per_class", label) or {}
        b_f1 = _get(run.metrics, "before", "per_class", label, "f1")
        pr = [_pct(a.get(k)) for k in ("precision", "recall", "f1")]
        rows.append([label, *pr, _count(a.get("support")), _pct(b_f1), _pp(a.get("f1"), b_f1)])
    header = ["label", "precision", "recall", "F1", "support", "F1 before", "F1 change"]
    return Table(header, rows, signed=(6,))


def _history_block(run: _Run) -> Block:
    if not run.history:
        return Text(f"{_DASH} (no training epochs; this run only evaluates the model as loaded)", muted=True)
    rows = []
    for i, h in enumerate(run.history):
        epoch = h.get("epoch", i + 1)
        marker = " ★" if run.best_epoch is not None and _finite(epoch) == run.best_epoch else ""
        losses = [_fixed(h.get("train_loss")), _pct(h.get("train_accuracy")), _fixed(h.get("val_loss"))]
        scores = [_pct(h.get(f"val_{k}")) for k in ("accuracy", "precision", "recall", "f1")]
        rows.append(
            [f"{epoch}{marker}", *losses, *scores, _sci(h.get("learning_rate")), _seconds(h.get("epoch_seconds"))]
        )
    header = [
        "epoch",
        "train loss",
        "train acc",
        "val loss",
        "val acc",
        "val prec",
        "val recall",
        "val F1",
        "LR",
        "time",
    ]
    return Table(header, rows)


def _comparison_row(method: str, run: _Run, output_dir: Path) -> dict[str, Any]:
    m = run.metrics
    after = m.get("after") or {}
    trainable, total = _finite(m.get("trainable_params")), _finite(m.get("total_params"))
    return {
        "method": method,
        **{key: after.get(key) for key, _ in _METRICS},
        "train_seconds": m.get("train_seconds"),
        "seconds_per_epoch": _seconds_per_epoch(run),
        "trainable_params": m.get("trainable_params"),
        "trainable_percent": 100 * trainable / total if trainable is not None and total else None,
        "total_params": m.get("total_params"),
        "peak_memory_mb": m.get("peak_memory_mb"),
        "artifact_size_bytes": m.get("adapter_size_bytes"),
        "best_epoch": m.get("best_epoch"),
        "run_dir": Path(os.path.relpath(run.dir.resolve(), output_dir.resolve())).as_posix(),
    }


def _comparison_blocks(runs: dict[str, _Run], rows: list[dict[str, Any]], figures: list[Figure]) -> list[Block]:
    models = {_model_name(run.metrics.get("model_name") or run.metrics.get("model")) for run in runs.values()}
    datasets = {_data_name(run) for run in runs.values()} - {None}
    task = [f"model: {', '.join(sorted(models))}"] + ([f"data: {', '.join(sorted(datasets))}"] if datasets else [])
    splits = {run.split for run in runs.values()}
    scored = [r for r in rows if _finite(r["accuracy"]) is not None]
    blocks: list[Block] = [Text("; ".join(task) + f"; scores on the {', '.join(sorted(splits))} split.")]
    if scored:
        best = max(scored, key=lambda r: r["accuracy"])
        blocks.append(
            Text(f"Most accurate: {best['method']}, {_pct(best['accuracy'])} in {_seconds(best['train_seconds'])}.")
        )
    columns = {
        "method": lambda r: str(r["method"]),
        **{name.split(" ")[0]: lambda r, k=key: _pct(r[k]) for key, name in _METRICS},
        "train time": lambda r: _seconds(r["train_seconds"]),
        "time / epoch": lambda r: _seconds(r["seconds_per_epoch"]),
        "trainable params": lambda r: _share(r["trainable_params"], r["total_params"]),
        "total params": lambda r: _count(r["total_params"]),
        "peak memory": lambda r: _megabytes(r["peak_memory_mb"]),
        "artifact size": lambda r: _size(r["artifact_size_bytes"]),
        "best epoch": lambda r: _count(r["best_epoch"]),
        "run folder": lambda r: str(r["run_dir"]),
    }
    table_rows = [[render(r) for render in columns.values()] for r in rows]
    header = list(columns)
    return [
        *blocks,
        Heading("Results"),
        Table(header, table_rows, align="l" + "r" * 11 + "l"),
        Text("Precision, recall and F1 are macro averages; trainable params show their share of the total.", True),
        Heading("Plots"),
        *[Figures([f]) for f in figures],
    ]
