"""The file `loratune predict --output` writes (CSV, JSONL or Parquet), a chunk of rows at a time, and how a
prediction reads on the terminal.

Every input column is kept as it was (a gold `label` column stays the user's, for comparison); the prediction adds
`predicted_label`, `score` and `prob_<label>` for every label, or for a multi-label run `predicted_labels` and
`scores` (lists in JSONL and Parquet; in CSV the names joined with "|", as the training data spells them). A name
the input already uses gets a `_` appended, so nothing of the input is overwritten.

The rows go to a temporary file beside the output, renamed into place only when the last row is written: an
interrupted or failed prediction leaves no half-written file that looks complete, and an earlier output stays whole.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from loratune.errors import DataError
from loratune.formatting import NO_LABELS
from loratune.runs.files import follow_umask
from loratune.runs.storage import reporting_full_disk
from loratune.schema import SET_SEPARATOR

OUTPUT_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def check_output_name(path: str | Path) -> None:
    """Refuse an output format loratune cannot write, before any model loads."""
    if Path(path).suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"Cannot write {Path(path).name}: use an output file ending in .csv, .jsonl or .parquet.")


def format_prediction(prediction: dict[str, Any]) -> str:
    """'label<TAB>score', or for a multi-label prediction 'label (score), label (score)' ('(none)' for no label)."""
    if "labels" not in prediction:
        return f"{prediction['label']}\t{prediction['score']:.4f}"
    chosen = zip(prediction["labels"], prediction["scores"], strict=True)
    return ", ".join(f"{label} ({score:.4f})" for label, score in chosen) or NO_LABELS


class PredictionWriter:
    """Writes rows with their predictions to `path`, chunk by chunk; use as a context manager: the file appears
    only when the block ends without an error.

    Args:
        columns: the input's columns, in order (the output keeps them first).
        labels: the run's labels; multi: whether predictions are label sets.
        parquet_schema: the input's own Arrow schema when it is a Parquet file (its columns keep their types);
            otherwise input values other than text are written as JSON text to Parquet.
    """

    def __init__(
        self, path: str | Path, columns: list[str], labels: list[str], multi: bool, parquet_schema: Any = None
    ) -> None:
        check_output_name(path)
        self.path = Path(path)
        self.format = {".csv": "csv", ".parquet": "parquet"}.get(self.path.suffix.lower(), "jsonl")
        self.columns = columns
        self.multi, self.labels = multi, labels
        self.parquet_schema = parquet_schema
        self.rows_written = 0
        self._tmp: Path | None = None
        self._handle: Any = None
        self._writer: Any = None

    def __enter__(self) -> PredictionWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial")
        os.close(fd)
        self._tmp = Path(tmp)
        if self.format != "parquet":
            self._handle = self._tmp.open("w", encoding="utf-8", newline="")
        if self.format == "csv":
            self._writer = csv.DictWriter(self._handle, fieldnames=self.output_columns(), restval="")
            self._writer.writeheader()
        return self

    def output_columns(self) -> list[str]:
        """The input's columns, then the prediction's, renamed where the input already has the name."""
        blank = {"probabilities": dict.fromkeys(self.labels, 0.0)}
        blank |= {"labels": [], "scores": []} if self.multi else {"label": "", "score": 0.0}
        return list(_row(dict.fromkeys(self.columns), blank, jsonl=False))

    def write(self, rows: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> None:
        """Append rows (as read) with their predictions."""
        with reporting_full_disk(self.path, None):
            if self.format == "csv":
                pairs = zip(rows, predictions, strict=True)
                self._writer.writerows(_row(r, p, False, self.columns) for r, p in pairs)
            elif self.format == "jsonl":
                for r, p in zip(rows, predictions, strict=True):
                    self._handle.write(json.dumps(_row(r, p, True, self.columns), ensure_ascii=False) + "\n")
            else:
                self._write_parquet([_row(r, p, True, self.columns) for r, p in zip(rows, predictions, strict=True)])
        self.rows_written += len(rows)

    def _write_parquet(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, self._arrow_schema(pa))
        schema = self._writer.schema
        own = set(self.parquet_schema.names) if self.parquet_schema is not None else set()
        for row in rows:  # keep the input's types where it has them; anything else is text
            for name in self.columns:
                if name not in own and row.get(name) is not None and not isinstance(row[name], str):
                    row[name] = json.dumps(row[name], ensure_ascii=False)
        self._writer.write_table(pa.Table.from_pylist(rows, schema=schema))

    def _arrow_schema(self, pa: Any) -> Any:
        own = {f.name: f.type for f in self.parquet_schema} if self.parquet_schema is not None else {}
        fields = [pa.field(name, own.get(name, pa.string())) for name in self.columns]
        added = self.output_columns()[len(self.columns) :]
        for name in added:
            if name.startswith("predicted_label") and self.multi:
                kind = pa.list_(pa.string())
            elif name.startswith("predicted_label"):
                kind = pa.string()
            elif name.startswith("scores") and self.multi:
                kind = pa.list_(pa.float64())
            else:
                kind = pa.float64()
            fields.append(pa.field(name, kind))
        return pa.schema(fields)

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            with reporting_full_disk(self.path, None):  # buffered rows reach the disk here
                if self._handle is not None:
                    self._handle.close()
                if self._writer is not None and self.format == "parquet":
                    self._writer.close()
            if kind is None:
                follow_umask(self._tmp)  # mkstemp creates 0600
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)


def write_predictions(
    path: str | Path, texts: list[str], predictions: list[dict[str, Any]], inputs: list[dict[str, Any]] | None = None
) -> None:
    """Write each input row with its prediction beside it (all in memory; `PredictionWriter` streams).

    Args:
        inputs: the rows as read (`cli.texts.read_inputs`); None: each text alone, as {"text": text}.
    """
    inputs = inputs if inputs is not None else [{"text": t} for t in texts]
    columns = list(dict.fromkeys(key for row in inputs for key in row)) or ["text"]
    first = predictions[0] if predictions else {"probabilities": {}}
    with PredictionWriter(path, columns, list(first["probabilities"]), "labels" in first) as writer:
        writer.write(inputs, predictions)


def _row(
    row: dict[str, Any], prediction: dict[str, Any], jsonl: bool, taken: list[str] | None = None
) -> dict[str, Any]:
    """The row with the prediction's columns added, each renamed while the input's columns (`taken`: the whole
    file's, so that every row renames alike; else this row's) already use the name."""
    taken_names = set(taken if taken is not None else row)
    added = {}
    if "labels" not in prediction:
        added |= {"predicted_label": prediction["label"], "score": round(prediction["score"], 6)}
    else:
        scores = [round(s, 6) for s in prediction["scores"]]
        if jsonl:
            added |= {"predicted_labels": prediction["labels"], "scores": scores}
        else:
            added |= {
                "predicted_labels": SET_SEPARATOR.join(prediction["labels"]),
                "scores": SET_SEPARATOR.join(map(str, scores)),
            }
    added |= {f"prob_{k}": round(v, 6) for k, v in prediction["probabilities"].items()}
    kept = dict(row)
    for name, value in added.items():
        while name in taken_names:
            name += "_"
        kept[name] = value
    return kept
