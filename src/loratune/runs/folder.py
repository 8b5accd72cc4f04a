"""A finished run, as the Python API hands it out: its scores, its predictions and what training changed, and a
predictor loaded on first use. Everything is read from the run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from loratune.runs import files
from loratune.scoring import changes
from loratune.config import Config
from loratune.inference.predictor import Predictor
from loratune.schema import Metrics, RunSummary


@dataclass(repr=False)
class Run:
    """A finished run: its folder, summary (`schema.RunSummary`) and config; a predictor loaded on first use."""

    run_dir: Path
    summary: RunSummary
    config: Config
    _predictor: Predictor | None = None

    @property
    def before(self) -> Metrics:
        return self.summary.before

    @property
    def after(self) -> Metrics:
        return self.summary.after

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"Run({str(self.run_dir)!r}: {s.method}, {s.eval_split} accuracy {s.before.accuracy:.4f} -> "
            f"{s.after.accuracy:.4f}, f1 {s.before.f1:.4f} -> {s.after.f1:.4f})"
        )

    def predict(self, texts: list[str], text_pairs: list[str] | None = None) -> list[dict[str, Any]]:
        """Label and probabilities for each text (see `Predictor.predict`)."""
        if self._predictor is None:
            self._predictor = Predictor.from_run(self.run_dir)
        return self._predictor.predict(texts, text_pairs)

    def predictions(self) -> pd.DataFrame:
        """The eval split example by example, before and after (`files.PREDICTIONS_FILE`; see `changes`)."""
        return files.load_predictions(self.run_dir)

    def changes(self, kind: str | None = None) -> pd.DataFrame:
        """The predictions with a `change` column: fixed, broken, still_wrong or still_right.

        Args:
            kind: only the examples of this kind, the most confident (after training) first.
        """
        table = self.predictions()
        if kind is not None:
            if kind not in (*changes.KINDS, "still_right"):
                raise ValueError(f"kind must be one of {[*changes.KINDS, 'still_right']}, got {kind!r}")
            table = changes.examples(table, kind, limit=None)
        return table.assign(change=changes.kind_of(table))


def load_run(run_dir: str | Path) -> Run:
    """Open a finished run folder.

    Raises:
        RunError: when the folder is missing, unfinished or damaged.
    """
    run_dir = files.check_run(run_dir)
    return Run(run_dir, files.load_summary(run_dir), files.load_run_config(run_dir))
