"""A comparison for the terminal: the table `loratune compare` prints at its end, from `comparison.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loratune.formatting import DASH, finite, percent, seconds
from loratune.runs import files


def score(row: dict[str, Any], key: str) -> str:
    """'84.7%', or '84.7% ± 0.4' (the standard deviation in points) over several seeds."""
    std = row.get(f"{key}_std")
    return percent(row[key]) + (f" ± {100 * std:.1f}" if finite(std) is not None else "")


def terminal_table(output_dir: str | Path) -> str:
    """The comparison's table for a terminal, from its `comparison.json`: one line per method with its score,
    macro F1, training time and trainable share (multi-label rows, which carry micro F1, lead with macro F1)."""
    rows = files.read_json(Path(output_dir) / "comparison.json")
    multi = any("micro_f1" in row for row in rows)
    header = ["method", "macro F1", "micro F1", "subset acc"] if multi else ["method", "accuracy", "macro F1"]
    header += ["train time", "trainable"]
    keys = ["f1", "micro_f1", "accuracy"] if multi else ["accuracy", "f1"]
    lines = []
    for row in rows:
        cells = [str(row["method"]) + (" (one class)" if row.get("single_class") is not None else "")]
        cells += [score(row, key) for key in keys]
        trainable = row.get("trainable_percent")
        cells += [seconds(row.get("train_seconds")), DASH if trainable is None else f"{trainable:.2f}%"]
        lines.append(cells)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines, strict=True)]
    return "\n".join(
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        for cells in [header, *lines]
    )
