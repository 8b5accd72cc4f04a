"""The PNG plots of a run report and of a comparison, drawn from `RunSummary` records.

Figures are built with matplotlib's object API on an Agg canvas, so no global pyplot state or GUI backend is
touched, and saved without date metadata, so the same summary always gives byte-identical PNGs. This module only
draws: which plots a page shows, and their captions, are decided by `report.run_report` and `report.comparison`.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from loratune.formatting import finite, percent
from loratune.schema import RunSummary
from loratune.task import Task

__all__ = [
    "DPI",
    "plot_comparison_curves",
    "plot_confusion",
    "plot_curves",
    "plot_per_class_f1",
    "plot_per_label_f1",
    "plot_reliability",
    "plot_score_vs_time",
]

log = logging.getLogger(__name__)
DPI = 130
# Characters the plot font lacks, already reported in this process (one line, not one per figure and character).
_MISSING_GLYPHS: set[str] = set()
_COLORS = {"train": "#f08c00", "validation": "#3b5bdb", "before": "#495057", "after": "#2f9e44", "best": "#adb5bd"}
_PALETTE = ["#3b5bdb", "#f08c00", "#2f9e44", "#e03131", "#9c36b5", "#1098ad", "#5c940d", "#d6336c"]
# What the comparison plots call a score (`Metrics` field, also `EpochRecord.val_<key>`).
_SCORE_NAMES = {"accuracy": "accuracy", "f1": "macro F1"}


def plot_curves(summary: RunSummary, key: str, path: Path, name: str | None = None) -> None:
    """Train and validation `key` ("accuracy" or "loss") per epoch, titled `name` (default: the key).

    The untrained score sits at epoch 0, and the best epoch is marked with the score after training.
    """
    history = summary.history
    split = summary.eval_split
    # Small on purpose: two of these sit side by side in the HTML, and a small figure keeps its text legible there.
    figure = _new_figure(5.2, 3.5)
    ax = figure.add_subplot()
    epochs = [h.epoch for h in history]
    train = _points(epochs, [getattr(h, f"train_{key}") for h in history])
    val = _points(epochs, [getattr(h, f"val_{key}") for h in history])
    before = finite(getattr(summary.before, key))
    after = finite(getattr(summary.after, key))
    best = summary.best_epoch

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
    if history:
        ax.axvline(best, linestyle="--", color=_COLORS["best"], label=f"best epoch ({best})")
        if after is not None:
            marker = {"marker": "*", "markersize": 15, "linestyle": "none", "color": _COLORS["after"]}
            ax.plot([best], [after], **marker, label=f"after ({split})")
    if not (train[0] or val[0] or before is not None):
        ax.text(0.5, 0.5, f"no {key} recorded", ha="center", va="center", transform=ax.transAxes, color="#868e96")

    last = max([0.0, *epochs])
    ax.set_xlim(-0.4, last + 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    name = name or key
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.set_title(f"{name[:1].upper()}{name[1:]} per epoch")
    _style_axes(ax, as_percent=key == "accuracy")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, framealpha=0.9)
    _save(figure, path)


def plot_confusion(
    matrix: Sequence[Sequence[Any]], labels: Sequence[str], path: Path, row_totals: Sequence[Any] | None = None
) -> None:
    """Counts and row-normalised matrices side by side; rows are true labels, columns predictions. `row_totals`:
    each row's whole count when the matrix shows only some of the columns (default: the row's sum)."""
    counts = [[finite(c) or 0.0 for c in row] for row in matrix]
    n = len(counts)
    names = [_mpl(_short(label)) for label in (list(labels) + [str(i) for i in range(len(labels), n)])[:n]]
    totals = [finite(t) or 0.0 for t in row_totals] if row_totals is not None else [sum(row) for row in counts]
    normalised = [[c / total if total else 0.0 for c in row] for row, total in zip(counts, totals, strict=True)]

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


def plot_per_class_f1(summary: RunSummary, labels: Sequence[str], path: Path) -> None:
    """F1 of each class before and after training, as pairs of bars."""
    before = [_class_f1(summary.before.per_class, label) for label in labels]
    after = [_class_f1(summary.after.per_class, label) for label in labels]
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
    ax.set_title(f"Per-class F1 ({summary.eval_split} split)")
    _style_axes(ax, as_percent=True)
    ax.legend(fontsize=8, framealpha=0.9)
    _save(figure, path)


def plot_per_label_f1(summary: RunSummary, labels: Sequence[str], path: Path) -> None:
    """F1 of each label before and after training as horizontal bars, the first label on top.

    Horizontal, so that dozens of labels (GoEmotions has 28) stay readable; each tick names the label's support.
    """
    n = len(labels)
    figure = _new_figure(7.0, min(max(2.4, 0.32 * n + 1.3), 14.0))
    ax = figure.add_subplot()
    positions = list(range(n))
    for offset, state, color in ((-0.2, "before", _COLORS["best"]), (0.2, "after", _COLORS["validation"])):
        per_class = getattr(summary, state).per_class
        scores = [_class_f1(per_class, label) or 0.0 for label in labels]  # a missing score draws as no bar
        ax.barh([p + offset for p in positions], scores, 0.4, color=color, label=state)
    names = []
    for label in labels:
        support = getattr(summary.after.per_class.get(label), "support", None)
        names.append(_mpl(_short(label)) + ("" if support is None else f" ({support:,})"))
    ax.set_yticks(positions, names, fontsize=9 if n <= 12 else 8)
    ax.set_ylim(n - 0.5, -0.5)  # the first label (the most frequent) on top
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("F1")
    ax.set_title(f"Per-label F1 ({summary.eval_split} split; support in brackets)")
    _style_axes(ax, as_percent=False)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.legend(fontsize=8, framealpha=0.9, loc="lower right")
    _save(figure, path)


def plot_comparison_curves(runs: dict[str, RunSummary], path: Path, key: str = "accuracy") -> None:
    """Validation `key` ("accuracy" or "f1") per epoch, one line per method; untrained runs (no history) are dashed
    horizontals."""
    figure = _new_figure(6.0, 3.8)
    ax = figure.add_subplot()
    last_epoch = 1.0
    flat: list[tuple[str, float]] = []
    colors = _method_colors(runs)
    for method, summary in runs.items():
        if not summary.history:
            score = finite(getattr(summary.after, key))
            if score is not None:
                flat.append((method, score))
            continue
        epochs = [0.0] + [h.epoch for h in summary.history]
        scores = [getattr(summary.before, key)] + [getattr(h, f"val_{key}") for h in summary.history]
        xs, ys = _points(epochs, scores)
        last_epoch = max([last_epoch, *xs])
        if xs:
            ax.plot(xs, ys, marker="o", color=colors[method], label=_mpl(method))
    for method, score in flat:
        ax.axhline(score, linestyle="--", color=colors[method], label=_mpl(f"{method} ({percent(score)})"))
    ax.set_xlim(-0.3, last_epoch + 0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_ylabel(f"validation {_SCORE_NAMES[key]}")
    ax.set_title(f"Validation {_SCORE_NAMES[key]} per epoch")
    _style_axes(ax, as_percent=True)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, framealpha=0.9)
    _save(figure, path)


def plot_score_vs_time(runs: dict[str, RunSummary], path: Path, key: str = "accuracy") -> None:
    """`key` ("accuracy" or "f1") after training against training time, one labelled point per method."""
    figure = _new_figure(6.0, 3.8)
    ax = figure.add_subplot()
    colors = _method_colors(runs)
    for method, summary in runs.items():
        x, y = finite(summary.train_seconds), finite(getattr(summary.after, key))
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=60, color=colors[method], zorder=3)
        ax.annotate(_mpl(method), (x, y), xytext=(6, 5), textcoords="offset points", fontsize=9)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel(f"{_SCORE_NAMES[key]} after training")
    ax.set_title(f"{_SCORE_NAMES[key][:1].upper()}{_SCORE_NAMES[key][1:]} vs training time")
    ax.margins(x=0.15, y=0.15)
    _style_axes(ax, as_percent=True)
    _save(figure, path)


def _method_colors(runs: dict[str, RunSummary]) -> dict[str, str]:
    """One colour per method, the same in every comparison plot; untrained baselines are grey."""
    trained = [method for method, summary in runs.items() if summary.trained]
    colors = {method: _PALETTE[i % len(_PALETTE)] for i, method in enumerate(trained)}
    return {method: colors.get(method, _COLORS["before"]) for method in runs}


def _class_f1(per_class: dict[str, Any], label: str) -> float | None:
    scores = per_class.get(label)
    return None if scores is None else finite(scores.f1)


def _points(xs: Sequence[float], ys: Sequence[Any]) -> tuple[list[float], list[float]]:
    """The (x, y) pairs whose y is a finite number, as the two lists `Axes.plot` takes."""
    kept = [(x, y) for x, y in zip(xs, map(finite, ys), strict=True) if y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> None:
    # No Software/date metadata, so identical inputs give byte-identical PNGs.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.savefig(path, dpi=DPI, facecolor="white", metadata={"Software": None})
    missing = set()
    for w in caught:
        glyph = re.search(r"Glyph (\d+) .*missing from font", str(w.message))
        if glyph is None:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        else:
            missing.add(chr(int(glyph.group(1))))
    # matplotlib warns once per character and figure, in its words; one line in ours says what the user sees.
    new = sorted(missing - _MISSING_GLYPHS)
    if new:
        _MISSING_GLYPHS.update(new)
        log.warning(
            "The plot font has no glyph for %s in the label names; the plots show them as boxes (the report's "
            "tables show them as written).",
            " ".join(new[:10]) + (f" and {len(new) - 10} more" if len(new) > 10 else ""),
        )


def _mpl(text: str) -> str:
    """Escape '$' so a label like '$5' is not read as mathtext."""
    return str(text).replace("$", r"\$")


def _short(text: str, limit: int = 18) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _style_axes(ax: Any, as_percent: bool) -> None:
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    if as_percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _slanted(slant: bool) -> dict[str, Any]:
    """Tick-label options: long or many labels are rotated so they don't overlap."""
    return {"rotation": 45, "ha": "right"} if slant else {"rotation": 0, "ha": "center"}


def plot_reliability(bins: dict[str, list[dict[str, float]]], path: Path, task: Task) -> None:
    """Reliability diagram: accuracy against mean confidence per confidence bin, one line per model state
    ("before", "after", "after_calibrated"), with the diagonal a perfectly calibrated model would follow.

    For a multi-label run the bins hold every (example, label) probability, so the axes read "predicted
    probability" and "fraction true" instead.
    """
    figure = _new_figure(5.2, 3.8)
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color=_COLORS["best"], label="perfectly calibrated")
    styles = {
        "before": (_COLORS["before"], "before"),
        "after": (_COLORS["after"], "after"),
        "after_calibrated": (_COLORS["validation"], "after, temperature-scaled"),
    }
    for key, (color, name) in styles.items():
        points = [(finite(b.get("confidence")), finite(b.get("accuracy"))) for b in bins.get(key, [])]
        points = [(x, y) for x, y in points if x is not None and y is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=4, color=color, label=name)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    x_label, y_label = _RELIABILITY_AXES[task.name]
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title("Reliability")
    _style_axes(ax, as_percent=True)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.legend(fontsize=8, framealpha=0.9)
    _save(figure, path)


# What a reliability diagram's axes measure: a top-label confidence, or every (text, label) probability.
_RELIABILITY_AXES = {
    "single": ("confidence (top-label probability)", "accuracy"),
    "multi": ("predicted probability (every label)", "fraction true"),
}
