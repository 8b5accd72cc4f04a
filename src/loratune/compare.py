"""Run several training methods on the same data, seed, epochs and evaluation, and put them in one table.

Each method trains in its own child process, so its peak-memory figure is its own and not the high-water mark
left by the method before it. `write_comparison` builds the comparison page from the finished run folders alone,
so it can be rebuilt without a model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from loratune import artifacts, plots
from loratune.config import METHODS, Config
from loratune.errors import ConfigError
from loratune.formatting import METRICS, count, finite, megabytes, percent, seconds, share, size
from loratune.render import Block, Figure, Figures, Heading, Table, Text, render_html, render_markdown
from loratune.report import RunFolder, read_run_folder

log = logging.getLogger(__name__)

# "base" is the model as loaded (method none): the literal "before" row.
METHOD_ALIASES = {"base": "none"}
DEFAULT_METHODS = ("base", "head", "lora", "full")


def parse_methods(text: str) -> list[str]:
    """'base,head,lora' -> ['base', 'head', 'lora'], checked against the methods loratune knows."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    allowed = sorted(set(METHODS) - {"none"} | set(METHOD_ALIASES))
    unknown = [m for m in methods if METHOD_ALIASES.get(m, m) not in METHODS or m == "none"]
    if unknown or not methods:
        raise ConfigError(f"Unknown method(s) {unknown or text!r} in --methods; choose from {allowed}.")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--methods lists a method twice: {methods}.")
    return methods


def compare(cfg: Config, methods: list[str], output_dir: str | Path) -> Path:
    """Train each method into `output_dir/<method>` and write comparison.json / .md / .html there.

    Returns:
        The path of comparison.html.

    Raises:
        RuntimeError: when every method failed (a failed method alone is shown as failed in the table).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    runs, failed = {}, []
    for method in methods:
        run_dir = output_dir / method
        method_cfg = dataclasses.replace(
            cfg,
            lora=dataclasses.replace(cfg.lora, method=METHOD_ALIASES.get(method, method)),
            train=dataclasses.replace(cfg.train, output_dir=str(run_dir), overwrite=True),
        )
        print(f"[compare] {method}: training into {run_dir}", file=sys.stderr, flush=True)
        if _train_in_child(method_cfg):
            runs[method] = run_dir
        else:
            failed.append(method)
    if not runs:
        raise RuntimeError(f"Every method failed ({', '.join(failed)}); see the errors above.")
    if failed:
        log.warning("Left out of the comparison after failing: %s", ", ".join(failed))
    return write_comparison(output_dir, runs)


def _train_in_child(cfg: Config) -> bool:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(cfg.to_yaml())
    try:
        return subprocess.run([sys.executable, "-m", "loratune", "train", "--config", handle.name]).returncode == 0
    finally:
        Path(handle.name).unlink(missing_ok=True)


def write_comparison(output_dir: str | Path, runs: dict[str, str | Path]) -> Path:
    """Compare several runs of the same task, one row per method.

    Writes `comparison.json` (a list of rows with the keys method, accuracy, precision, recall, f1, train_seconds,
    seconds_per_epoch, trainable_params, trainable_percent, total_params (one figure, the base model's, for every
    row), peak_memory_mb, artifact_size_bytes, best_epoch, single_class (the one label a trained method predicted
    for every text, else null) and run_dir), `comparison_val_accuracy.png`, `comparison_accuracy_vs_time.png`,
    `comparison.md` and a self-contained `comparison.html`.

    Args:
        output_dir: Folder to write into; created if needed.
        runs: Method name ("base", "head", "lora", "full", ...) to its run folder, in display order.

    Returns:
        The path of `comparison.html`.

    Raises:
        RunError: If a run folder's summary is missing or damaged.
        ValueError: If `runs` is empty.
    """
    if not runs:
        raise ValueError("write_comparison needs at least one run folder; got none.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    loaded = {method: read_run_folder(Path(path)) for method, path in runs.items()}
    total = _shared_total(loaded)
    rows = [_comparison_row(method, run, output_dir, total) for method, run in loaded.items()]
    for row in rows:
        if row["single_class"] is not None:
            log.warning(
                "%s predicted one class (%s) for every %s text; it did not learn at this budget.",
                row["method"],
                row["single_class"],
                loaded[row["method"]].summary.eval_split,
            )
    artifacts.write_json(output_dir / "comparison.json", rows)

    summaries = {method: run.summary for method, run in loaded.items()}
    plots.plot_comparison_curves(summaries, output_dir / "comparison_val_accuracy.png")
    plots.plot_accuracy_vs_time(summaries, output_dir / "comparison_accuracy_vs_time.png")
    figures = [
        Figure("comparison_val_accuracy.png", "Validation accuracy per epoch; epoch 0 is each run's untrained score"),
        Figure(
            "comparison_accuracy_vs_time.png", "Accuracy after training against training time, one point per method"
        ),
    ]
    title = "Method comparison"
    blocks = _comparison_blocks(loaded, rows, figures)
    artifacts.write_text(output_dir / "comparison.md", render_markdown(title, blocks))
    html_path = output_dir / "comparison.html"
    page = render_html(title, blocks, output_dir, kicker="loratune · comparison", dpi=plots.DPI)
    artifacts.write_text(html_path, page)
    return html_path


def _shared_total(runs: dict[str, RunFolder]) -> int:
    """One total for every row, so the trainable shares compare: the base model's (older run folders counted
    adapter weights in their own total)."""
    if "base" in runs:
        return runs["base"].summary.total_params
    return min((run.summary.total_params for run in runs.values() if run.summary.total_params), default=0)


def _single_class(s: Any, labels: list[str]) -> str | None:
    """The one label a trained method gave every text, or None."""
    predicted = [j for j in range(len(labels)) if any(row[j] for row in s.after.confusion_matrix if j < len(row))]
    return labels[predicted[0]] if s.trained and len(predicted) == 1 and len(labels) > 1 else None


def _comparison_row(method: str, run: RunFolder, output_dir: Path, total: int) -> dict[str, Any]:
    s = run.summary
    return {
        "method": method,
        **{key: getattr(s.after, key) for key, _ in METRICS},
        "train_seconds": s.train_seconds,
        "seconds_per_epoch": s.seconds_per_epoch,
        "trainable_params": s.trainable_params,
        "trainable_percent": 100 * s.trainable_params / total if total else None,
        "total_params": total,
        "peak_memory_mb": s.peak_memory_mb,
        "artifact_size_bytes": s.adapter_size_bytes,
        "best_epoch": s.best_epoch,
        "single_class": _single_class(s, run.labels),
        "run_dir": Path(os.path.relpath(run.dir.resolve(), output_dir.resolve())).as_posix(),
    }


def _comparison_blocks(runs: dict[str, RunFolder], rows: list[dict[str, Any]], figures: list[Figure]) -> list[Block]:
    models = {run.model_name for run in runs.values()}
    datasets = {run.data_name for run in runs.values()} - {None}
    task = [f"model: {', '.join(sorted(models))}"] + ([f"data: {', '.join(sorted(datasets))}"] if datasets else [])
    splits = {run.summary.eval_split for run in runs.values()}
    scored = [r for r in rows if finite(r["accuracy"]) is not None]
    blocks: list[Block] = [Text("; ".join(task) + f"; scores on the {', '.join(sorted(splits))} split.")]
    if scored:
        best = max(scored, key=lambda r: r["accuracy"])
        blocks.append(
            Text(f"Most accurate: {best['method']}, {percent(best['accuracy'])} in {seconds(best['train_seconds'])}.")
        )
    for r in rows:
        if r["single_class"] is not None:
            blocks.append(
                Text(
                    f"Warning: {r['method']} predicted one class ({r['single_class']}) for every text: it did not "
                    "learn at this budget (more data or epochs, or a higher --learning-rate, may help)."
                )
            )
    columns = {
        "method": lambda r: str(r["method"]) + (" ⚠ one class" if r["single_class"] is not None else ""),
        **{name.split(" ")[0]: lambda r, k=key: percent(r[k]) for key, name in METRICS},
        "train time": lambda r: seconds(r["train_seconds"]),
        "time / epoch": lambda r: seconds(r["seconds_per_epoch"]),
        "trainable params": lambda r: share(r["trainable_params"], r["total_params"]),
        "total params": lambda r: count(r["total_params"]),
        "peak memory": lambda r: megabytes(r["peak_memory_mb"]),
        "artifact size": lambda r: size(r["artifact_size_bytes"]),
        "best epoch": lambda r: count(r["best_epoch"]),
        "run folder": lambda r: str(r["run_dir"]),
    }
    table_rows = [[render(r) for render in columns.values()] for r in rows]
    return [
        *blocks,
        Heading("Results"),
        Table(list(columns), table_rows, align="l" + "r" * 11 + "l"),
        Text("Precision, recall and F1 are macro averages; trainable params show their share of the total.", True),
        Heading("Plots"),
        *[Figures([f]) for f in figures],
    ]
