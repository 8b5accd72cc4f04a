"""The files `loratune predict` reads texts from (CSV, TSV, JSONL, TXT) and writes predictions to (CSV, JSONL),
and how a prediction reads on the terminal."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from loratune.errors import DataError
from loratune.formatting import NO_LABELS
from loratune.runs import files
from loratune.schema import SET_SEPARATOR


def read_texts(path: str | Path, text_column: str | None = None) -> list[str]:
    """Texts from a CSV (column `text` or the only column) or JSONL file (key `text`), or a plain .txt file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Input file {str(path)!r} does not exist; check the path.")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix in (".csv", ".tsv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long texts are valid input (truncated when tokenised)
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = _csv_rows(handle, "\t" if suffix == ".tsv" else ",", path)
    elif suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise DataError(f"Cannot read {path.name}: use a .csv, .tsv, .jsonl or .txt file.")
    if not rows:
        raise DataError(f"{path} has no rows to predict.")
    columns = list(rows[0])
    column = text_column or ("text" if "text" in columns else columns[0] if len(columns) == 1 else None)
    if column is None or column not in columns:
        raise DataError(
            f"{path} has no text column {column or 'text'!r}; its columns are {columns}. Use --text-column."
        )
    return [str(row[column]) for row in rows]


_EXTRA = object()  # DictReader's key for the fields of a row beyond its header


def _csv_rows(handle: Any, delimiter: str, path: Path) -> list[dict[str, Any]]:
    """Rows as dicts; a row wider than the header is an error naming its line, never a silently shortened text,
    except in a one-column file, where an unquoted delimiter is part of the text and the whole line is kept."""
    reader = csv.DictReader(handle, delimiter=delimiter, restkey=_EXTRA)
    rows = []
    for row in reader:
        extra = row.pop(_EXTRA, None)
        if extra:
            columns = reader.fieldnames or []
            if len(columns) != 1:
                raise DataError(
                    f"{path}, line {reader.line_num}: {len(columns) + len(extra)} fields but the header has "
                    f"{len(columns)}; quote texts that hold a {delimiter!r}."
                )
            row[columns[0]] = delimiter.join([row[columns[0]], *extra])
        rows.append(row)
    return rows


def format_prediction(prediction: dict[str, Any]) -> str:
    """'label<TAB>score', or for a multi-label prediction 'label (score), label (score)' ('(none)' for no label)."""
    if "labels" not in prediction:
        return f"{prediction['label']}\t{prediction['score']:.4f}"
    chosen = zip(prediction["labels"], prediction["scores"], strict=True)
    return ", ".join(f"{label} ({score:.4f})" for label, score in chosen) or NO_LABELS


def write_predictions(path: str | Path, texts: list[str], predictions: list[dict[str, Any]]) -> None:
    """Write text, label, score and per-class probabilities as CSV or JSONL (by the file's extension).

    Multi-label predictions give `labels` and `scores` instead: JSON lists in JSONL, and in CSV the names joined
    with "|" (as the training data spells them) and their scores joined likewise.
    """
    path = Path(path)
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    rows = [_row(t, p, jsonl) for t, p in zip(texts, predictions, strict=True)]
    if jsonl:
        files.write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    elif path.suffix.lower() == ".csv":
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["text", "label", "score"])
        writer.writeheader()
        writer.writerows(rows)
        files.write_text(path, buffer.getvalue())
    else:
        raise DataError(f"Cannot write {path.name}: use an output file ending in .csv or .jsonl.")


def _row(text: str, prediction: dict[str, Any], jsonl: bool) -> dict[str, Any]:
    probs = {f"prob_{k}": round(v, 6) for k, v in prediction["probabilities"].items()}
    if "labels" not in prediction:
        return {"text": text, "label": prediction["label"], "score": round(prediction["score"], 6)} | probs
    scores = [round(s, 6) for s in prediction["scores"]]
    if jsonl:
        return {"text": text, "labels": prediction["labels"], "scores": scores} | probs
    joined = {"labels": SET_SEPARATOR.join(prediction["labels"]), "scores": SET_SEPARATOR.join(map(str, scores))}
    return {"text": text} | joined | probs
