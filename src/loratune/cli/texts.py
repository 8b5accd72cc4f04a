"""The files `loratune predict` reads texts from (CSV, TSV, JSONL, TXT) and writes predictions to (CSV, JSONL),
and how a prediction reads on the terminal."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from loratune.errors import DataError
from loratune.formatting import NO_LABELS
from loratune.runs import files
from loratune.schema import SET_SEPARATOR


def read_texts(path: str | Path, text_column: str | None = None) -> list[str]:
    """Texts from a CSV (column `text` or the only column) or JSONL file (key `text`), or a plain .txt file
    (see `read_inputs`)."""
    return read_inputs(path, text_column)[0]


def read_inputs(path: str | Path, text_column: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """The texts of a CSV (column `text` or the only column) or JSONL file (key `text`), or a plain .txt file, and
    each row as read (every column, in the file's order; a .txt line is {"text": line}), which `write_predictions`
    writes back beside the predictions.

    Raises:
        DataError: one line naming the file, the line and the fix, for bytes that are not UTF-8, a line that is not
            a JSON object, a row without the text, or a text that is not a string (null, a number, a list).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Input file {str(path)!r} does not exist; check the path.")
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".csv", ".tsv", ".jsonl", ".json"):
        raise DataError(f"Cannot read {path.name}: use a .csv, .tsv, .jsonl or .txt file.")
    text = _utf8(path)
    if suffix == ".txt":
        lines = [line for line in text.splitlines() if line.strip()]
        return lines, [{"text": line} for line in lines]
    if suffix in (".csv", ".tsv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long texts are valid input (truncated when tokenised)
        numbered = _csv_rows(io.StringIO(text, newline=""), "\t" if suffix == ".tsv" else ",", path)
    else:
        numbered = [(n, _json_row(line, n, path)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        raise DataError(f"{path} has no rows to predict.")
    columns = list(numbered[0][1])
    column = text_column or ("text" if "text" in columns else columns[0] if len(columns) == 1 else None)
    if column is None or column not in columns:
        raise DataError(
            f"{path} has no text column {column or 'text'!r}; its columns are {columns}. Use --text-column."
        )
    return [_text_of(row, column, n, path) for n, row in numbered], [row for _, row in numbered]


def _utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: byte 0x{data[error.start]:02x} is not UTF-8 text; save the file as UTF-8."
        ) from None


def _json_row(line: str, number: int, path: Path) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(
            f'{path}, line {number}: not JSON ({error.msg}); each line holds one object such as {{"text": "..."}}.'
        ) from None
    if not isinstance(row, dict):
        raise DataError(f'{path}, line {number} is not a JSON object; each line holds one, such as {{"text": "..."}}.')
    return row


def _text_of(row: dict[str, Any], column: str, number: int, path: Path) -> str:
    """The row's text; anything but a string is an error, never its printed form ("None", "12345", "['a']")."""
    if column not in row:
        raise DataError(f"{path}, line {number} has no {column!r}; its keys are {list(row)[:10]}. Give every row one.")
    value = row[column]
    if not isinstance(value, str):
        kind = "null" if value is None else f"a {type(value).__name__} ({json.dumps(value)[:30]})"
        raise DataError(f"{path}, line {number}: {column!r} is {kind}, not a text; give every row a text.")
    return value


_EXTRA = object()  # DictReader's key for the fields of a row beyond its header


def _csv_rows(handle: Any, delimiter: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
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
        rows.append((reader.line_num, row))
    return rows


def format_prediction(prediction: dict[str, Any]) -> str:
    """'label<TAB>score', or for a multi-label prediction 'label (score), label (score)' ('(none)' for no label)."""
    if "labels" not in prediction:
        return f"{prediction['label']}\t{prediction['score']:.4f}"
    chosen = zip(prediction["labels"], prediction["scores"], strict=True)
    return ", ".join(f"{label} ({score:.4f})" for label, score in chosen) or NO_LABELS


def write_predictions(
    path: str | Path, texts: list[str], predictions: list[dict[str, Any]], inputs: list[dict[str, Any]] | None = None
) -> None:
    """Write each input row with its prediction beside it, as CSV or JSONL (by the file's extension).

    Every input column is kept as it was (a gold `label` column stays the user's, for comparison); the prediction
    adds `predicted_label`, `score` and `prob_<label>` for every label, or for a multi-label run
    `predicted_labels` and `scores` (JSON lists in JSONL; in CSV the names joined with "|", as the training data
    spells them). A name the input already uses gets a `_` appended, so nothing of the input is overwritten.

    Args:
        inputs: the rows as read (`read_inputs`); None: each text alone, as {"text": text}.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise DataError(f"Cannot write {path.name}: use an output file ending in .csv or .jsonl.")
    jsonl = suffix != ".csv"
    inputs = inputs if inputs is not None else [{"text": t} for t in texts]
    rows = [_row(row, p, jsonl) for row, p in zip(inputs, predictions, strict=True)]
    if jsonl:
        files.write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        return
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["text", "predicted_label", "score"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(path, buffer.getvalue())


def _row(row: dict[str, Any], prediction: dict[str, Any], jsonl: bool) -> dict[str, Any]:
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
        while name in row:
            name += "_"
        kept[name] = value
    return kept
