"""The comparison page of several runs of one task, one row per method (`comparison.json`, `.md`, `.html` and
its plots), built from the finished run folders alone, so it can be rebuilt without a model."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loratune.formatting import METRICS, change, count, finite, megabytes, percent, seconds, share, size
from loratune.report import plots
from loratune.report.comparison_terminal import score
from loratune.report.render import Block, Figure, Figures, Heading, Table, Text, render_html, render_markdown
from loratune.runs import files
from loratune.runs.folder import RunFolder
from loratune.scoring import significance
from loratune.task import SINGLE, Task, task_of

log = logging.getLogger(__name__)


def write_comparison(output_dir: str | Path, runs: dict[str, str | Path | list[str | Path]]) -> Path:
    """Compare several runs of the same task, one row per method.

    Writes `comparison.json` (a list of rows with the keys method, accuracy, precision, recall, f1, train_seconds,
    seconds_per_epoch, trainable_params, trainable_percent, total_params (one figure, the base model's, for every
    row), peak_memory_mb, artifact_size_bytes, best_epoch, single_class (the one label a trained method predicted
    for every text, else null) and run_dir; with several seeds the scores and costs are means, and seeds, run_dirs
    and accuracy_std, precision_std, recall_std, f1_std are added; every method but LoRA has vs_lora, its paired
    test against LoRA), `comparison_val_accuracy.png`, `comparison_accuracy_vs_time.png`, `comparison.md` and a
    self-contained `comparison.html`.

    Multi-label runs are compared by macro F1, micro F1 and subset accuracy (`accuracy`): their rows add micro_f1,
    samples_f1 and hamming_loss (with `_std` over seeds), the plots are `comparison_val_f1.png` and
    `comparison_f1_vs_time.png`, and the paired test counts a text right only when its whole label set is.

    Args:
        output_dir: Folder to write into; created if needed.
        runs: Method name ("base", "head", "lora", "full", ...) to its run folder, or to one run folder per seed,
            in display order.

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
    loaded = {
        method: [RunFolder.open(p, finished=False) for p in (paths if isinstance(paths, list) else [paths])]
        for method, paths in runs.items()
    }
    task = _task(loaded)
    rows = _rows(loaded, output_dir, task)
    files.write_json(output_dir / "comparison.json", rows)
    figures = _write_plots(loaded, output_dir, task)
    title = "Method comparison"
    blocks = _comparison_blocks(loaded, rows, figures, task)
    files.write_text(output_dir / "comparison.md", render_markdown(title, blocks))
    html_path = output_dir / "comparison.html"
    page = render_html(title, blocks, output_dir, kicker="loratune · comparison", dpi=plots.DPI)
    files.write_text(html_path, page)
    return html_path


def _rows(loaded: dict[str, list[RunFolder]], output_dir: Path, task: Task) -> list[dict[str, Any]]:
    """One row per method (see `write_comparison`), with its paired test against LoRA."""
    total = _shared_total(loaded)
    keys = [key for key, _ in METRICS] + list(_COMPARING[task.name].extra_keys)
    rows = [_comparison_row(method, folders, output_dir, total, keys) for method, folders in loaded.items()]
    if REFERENCE in loaded:
        for row in rows:
            if row["method"] != REFERENCE:
                row["vs_lora"] = _paired_test(loaded[REFERENCE], loaded[row["method"]])
    for row in rows:
        if row["single_class"] is not None:
            log.warning(
                "%s predicted one class (%s) for every %s text; it did not learn at this budget.",
                row["method"],
                row["single_class"],
                loaded[row["method"]][0].summary.eval_split,
            )
    return rows


def _write_plots(loaded: dict[str, list[RunFolder]], output_dir: Path, task: Task) -> list[Figure]:
    summaries = {method: folders[0].summary for method, folders in loaded.items()}  # curves: the first seed's
    key, name = _COMPARING[task.name].headline
    plots.plot_comparison_curves(summaries, output_dir / f"comparison_val_{key}.png", key)
    plots.plot_score_vs_time(summaries, output_dir / f"comparison_{key}_vs_time.png", key)
    first_seed = " (first seed)" if any(len(f) > 1 for f in loaded.values()) else ""
    return [
        Figure(
            f"comparison_val_{key}.png",
            f"Validation {name} per epoch{first_seed}; epoch 0 is each run's untrained score",
        ),
        Figure(
            f"comparison_{key}_vs_time.png",
            f"{name[:1].upper()}{name[1:]} after training against training time, one point per method{first_seed}",
        ),
    ]


REFERENCE = "lora"
ALPHA = 0.05


def _task(runs: dict[str, list[RunFolder]]) -> Task:
    """The runs' task; runs of both tasks are compared on the single-label columns, with a warning (their scores
    do not measure the same thing)."""
    tasks = {run.summary.task for folders in runs.values() for run in folders}
    if len(tasks) > 1:
        log.warning("The comparison mixes single- and multi-label runs; their scores are not comparable.")
        return SINGLE
    return task_of(tasks.pop())


def _seed(run: RunFolder) -> int:
    return run.config.train.seed


def _paired_test(reference: list[RunFolder], other: list[RunFolder]) -> dict[str, Any]:
    """McNemar's exact test of LoRA against another method, once per seed, on the same test examples.

    An example is right when `pred_after` equals `label`; in a multi-label run both are label sets written the same
    way (names joined in label order), so it is right only when its whole label set is.

    Per seed rather than pooled: runs with the same seed share the data subsample and the test examples, so each
    seed is a proper paired comparison; pooling seeds would count each test example several times as if it were
    independent, and shrink p-values for no reason. The verdict is "significant" only when every seed's test is
    (the largest p-value below ALPHA): a difference that seed noise can flip is not one to rely on.
    """
    by_seed = {_seed(run): run for run in other}
    p_values, differences = [], []
    for ref in reference:
        run = by_seed.get(_seed(ref))
        a, b = ref.predictions, run.predictions if run is not None else None
        if (
            a is None
            or b is None
            or len(a) != len(b)
            or not (a["text"].equals(b["text"]) and a["label"].equals(b["label"]))
        ):
            continue  # no predictions file, or not the same examples: nothing to pair
        _, _, p = significance.mcnemar_exact(a["pred_after"] == a["label"], b["pred_after"] == b["label"])
        p_values.append(p)
        differences.append(float((b["pred_after"] == b["label"]).mean() - (a["pred_after"] == a["label"]).mean()))
    return {
        "accuracy_difference": float(np.mean(differences)) if differences else None,  # other - LoRA
        "p_values": p_values,
        "significant": bool(max(p_values) < ALPHA) if p_values else None,
    }


def _shared_total(runs: dict[str, list[RunFolder]]) -> int:
    """One total for every row, so the trainable shares compare: the base model's (older run folders counted
    adapter weights in their own total)."""
    if "base" in runs:
        return runs["base"][0].summary.total_params
    totals = [run.summary.total_params for folders in runs.values() for run in folders if run.summary.total_params]
    return min(totals, default=0)


def _single_class(s: Any, labels: list[str]) -> str | None:
    """The one label a trained method gave every text, or None."""
    if not s.trained or len(labels) < 2:
        return None
    matrix = s.after.confusion_matrix
    if matrix:
        predicted = [j for j in range(len(labels)) if any(row[j] for row in matrix if j < len(row))]
        return labels[predicted[0]] if len(predicted) == 1 else None
    # Runs of many labels keep no matrix: one label predicted for every text is the one with all of its texts
    # right (recall 1) and a precision of its share of the split, every other label recalling nothing.
    recalled = [label for label, c in s.after.per_class.items() if c.recall > 0]
    if len(recalled) != 1 or s.after.num_samples == 0:
        return None
    only = s.after.per_class[recalled[0]]
    share = only.support / s.after.num_samples
    return recalled[0] if only.recall == 1.0 and abs(only.precision - share) < 1e-9 else None


def _comparison_row(
    method: str, runs: list[RunFolder], output_dir: Path, total: int, keys: list[str]
) -> dict[str, Any]:
    def mean(values: list[Any]) -> Any:
        numbers = [finite(v) for v in values]
        if None in numbers:
            return values[0] if len(values) == 1 else None
        return values[0] if len(values) == 1 else float(np.mean(numbers))

    def each(get: Any) -> Any:
        return mean([get(run.summary) for run in runs])

    row = {
        "method": method,
        **{key: each(lambda s, k=key: getattr(s.after, k)) for key in keys},
        "train_seconds": each(lambda s: s.train_seconds),
        "seconds_per_epoch": each(lambda s: s.seconds_per_epoch),
        "trainable_params": runs[0].summary.trainable_params,
        "trainable_percent": 100 * runs[0].summary.trainable_params / total if total else None,
        "total_params": total,
        "peak_memory_mb": each(lambda s: s.peak_memory_mb),
        "artifact_size_bytes": each(lambda s: s.adapter_size_bytes),
        "best_epoch": runs[0].summary.best_epoch,
        "single_class": next((c for c in (_single_class(r.summary, r.labels) for r in runs) if c), None),
        "run_dir": _relative(runs[0].run_dir, output_dir),
    }
    if len(runs) > 1:
        row["seeds"] = [_seed(run) for run in runs]
        row["run_dirs"] = [_relative(run.run_dir, output_dir) for run in runs]
        for key in keys:
            scores = [finite(getattr(run.summary.after, key)) for run in runs]
            row[f"{key}_std"] = None if None in scores else float(np.std(scores, ddof=1))
    return row


def _relative(path: Path, output_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), output_dir.resolve())).as_posix()


def _comparison_blocks(
    runs: dict[str, list[RunFolder]], rows: list[dict[str, Any]], figures: list[Figure], task: Task
) -> list[Block]:
    how = _COMPARING[task.name]
    method = {"method": lambda r: str(r["method"]) + (" ⚠ one class" if r.get("single_class") is not None else "")}
    # Two tables rather than one of twelve columns, which needed sideways scrolling on a laptop: the scores with
    # what they cost in time and weights, then the rest of the costs.
    scores = {
        **method,
        **{name: lambda r, k=key: score(r, k) for name, key in how.columns.items()},
        "train time": lambda r: seconds(r["train_seconds"]),
        "trainable params": lambda r: share(r["trainable_params"], r["total_params"]),
    }
    costs = {
        **method,
        "time / epoch": lambda r: seconds(r["seconds_per_epoch"]),
        "total params": lambda r: count(r["total_params"]),
        "peak memory": lambda r: megabytes(r["peak_memory_mb"]),
        "artifact size": lambda r: size(r["artifact_size_bytes"]),
        "best epoch": lambda r: count(r["best_epoch"]),
        "run folder": lambda r: str(r["run_dir"]),
    }

    def table(columns: dict[str, Callable[[dict[str, Any]], str]], last: str) -> Table:
        cells = [[render(r) for render in columns.values()] for r in rows]
        return Table(list(columns), cells, align="l" + "r" * (len(columns) - 2) + last)

    return [
        *_summary_blocks(runs, rows, how),
        Heading("Results"),
        table(scores, "r"),
        Text(how.note, muted=True),
        Heading("Costs"),
        table(costs, "l"),
        *_significance_blocks(rows, task),
        Heading("Plots"),
        *[Figures([f]) for f in figures],
    ]


def _summary_blocks(runs: dict[str, list[RunFolder]], rows: list[dict[str, Any]], how: _Comparing) -> list[Block]:
    """What was compared, the best method, and a warning for each method that predicted one class."""
    every = [run for folders in runs.values() for run in folders]
    models = {run.model_name for run in every}
    datasets = {run.data_name for run in every} - {None}
    what = [f"model: {', '.join(sorted(models))}"] + ([f"data: {', '.join(sorted(datasets))}"] if datasets else [])
    splits = {run.summary.eval_split for run in every}
    seeds = max(len(folders) for folders in runs.values())
    seed_note = f"; {seeds} seeds per method, scores are mean ± standard deviation (points)" if seeds > 1 else ""
    blocks: list[Block] = [Text("; ".join(what) + f"; scores on the {', '.join(sorted(splits))} split{seed_note}.")]
    scored = [r for r in rows if finite(r[how.headline[0]]) is not None]
    if scored:
        blocks.append(Text(how.best(max(scored, key=lambda r: r[how.headline[0]]))))
    for r in rows:
        if r["single_class"] is not None:
            blocks.append(
                Text(
                    f"Warning: {r['method']} predicted one class ({r['single_class']}) for every text: it did not "
                    "learn at this budget (more data or epochs, or a higher --learning-rate, may help)."
                )
            )
    return blocks


@dataclass(frozen=True)
class _Comparing:
    """How runs of a task are compared."""

    extra_keys: tuple[str, ...]  # scores beside accuracy and the macro averages
    headline: tuple[str, str]  # (key, name) of the score plotted and ranked by
    best: Callable[[dict[str, Any]], str]  # the sentence naming the best row
    columns: dict[str, str]  # the table's score columns: name -> row key
    note: str  # under the table
    right: str  # when an example counts as right in the paired test, where that needs saying


def _most_accurate(best: dict[str, Any]) -> str:
    return f"Most accurate: {best['method']}, {percent(best['accuracy'])} in {seconds(best['train_seconds'])}."


def _best_macro_f1(best: dict[str, Any]) -> str:
    return (
        f"Best macro F1: {best['method']}, {percent(best['f1'])} (micro F1 {percent(best['micro_f1'])}, "
        f"subset accuracy {percent(best['accuracy'])}) in {seconds(best['train_seconds'])}."
    )


_COMPARING = {
    "single": _Comparing(
        extra_keys=(),
        headline=("accuracy", "accuracy"),
        best=_most_accurate,
        columns={name.split(" ")[0]: key for key, name in METRICS},
        note="Precision, recall and F1 are macro averages; trainable params show their share of the total.",
        right="",
    ),
    # A multi-label run's accuracy is subset accuracy, which stays near zero with many labels: macro F1 leads.
    "multi": _Comparing(
        extra_keys=("micro_f1", "samples_f1", "hamming_loss"),
        headline=("f1", "macro F1"),
        best=_best_macro_f1,
        columns={"macro F1": "f1", "micro F1": "micro_f1", "subset accuracy": "accuracy"},
        note=(
            "Macro F1 weighs every label the same, micro F1 pools every (text, label) decision, and subset accuracy "
            "counts a text right only when its whole label set is; trainable params show their share of the total."
        ),
        right=" (each right only when its whole label set is)",
    ),
}


def _significance_blocks(rows: list[dict[str, Any]], task: Task) -> list[Block]:
    tested = [r for r in rows if "vs_lora" in r]
    if not tested:
        return []

    def verdict(test: dict[str, Any]) -> str:
        if test["significant"] is None:
            return "— (no paired predictions)"
        return "significant" if test["significant"] else "not significant"

    table_rows = [
        [
            str(r["method"]),
            change(r["vs_lora"]["accuracy_difference"], 0.0),
            ", ".join(f"{p:.3g}" for p in r["vs_lora"]["p_values"]) or "—",
            verdict(r["vs_lora"]),
        ]
        for r in tested
    ]
    return [
        Heading("Is the difference from LoRA real?"),
        Table(
            [
                "method",
                f"{task.accuracy_name} vs LoRA",
                "McNemar p (per seed)",
                "verdict (5%, every seed)",
            ],
            table_rows,
            align="lrrl",
            signed=(1,),
        ),
        Text(
            "McNemar's exact test pairs each method's run with LoRA's run of the same seed on the same test "
            f"examples{_COMPARING[task.name].right}; a difference counts as "
            "significant only when it is so at 5% in every seed, so one that seed noise can flip does not.",
            muted=True,
        ),
    ]
