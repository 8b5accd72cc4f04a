"""The files `loratune predict` reads texts from (CSV, TSV, JSONL, Parquet, TXT), a chunk of rows at a time
(`cli.prediction_files` writes the predictions)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loratune.errors import DataError

# Rows read, scored and written at a time by `loratune predict`: memory stays flat however long the input.
CHUNK_ROWS = 1024
INPUT_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".json", ".parquet")


def read_texts(path: str | Path, text_column: str | None = None) -> list[str]:
    """Texts from a CSV (column `text` or the only column) or JSONL file (key `text`), or a plain .txt file
    (see `read_inputs`)."""
    return read_inputs(path, text_column)[0]


def read_inputs(path: str | Path, text_column: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """The texts of an input file and each row as read (every column, in the file's order; a .txt line is
    {"text": line}), which `write_predictions` writes back beside the predictions. All in memory: `InputFile`
    reads a file of any size in chunks.

    Raises:
        DataError: see `InputFile.scan`.
    """
    source = InputFile(path, text_column)
    source.scan()
    texts, rows = [], []
    for chunk_texts, chunk_rows in source.chunks():
        texts += chunk_texts
        rows += chunk_rows
    return texts, rows


class InputFile:
    """A file of texts to predict, read row by row: CSV or TSV (column `text`, or the only column), JSONL (key
    `text`), Parquet (column `text`) or a plain .txt file (one text per non-blank line).

    `scan` reads it once to check every row and count them; `chunks` then reads it again, `CHUNK_ROWS` rows at a
    time, so predicting millions of rows never holds them all.
    """

    def __init__(self, path: str | Path, text_column: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"Input file {str(self.path)!r} does not exist; check the path.")
        self.suffix = self.path.suffix.lower()
        if self.suffix not in INPUT_SUFFIXES:
            raise DataError(f"Cannot read {self.path.name}: use a .csv, .tsv, .jsonl, .parquet or .txt file.")
        self.text_column = text_column
        self.rows_count = 0
        self.columns: list[str] = []
        self.column: str = text_column or "text"

    def scan(self) -> int:
        """Read every row once: the text column, every row's text, and the columns; returns the number of rows.

        Raises:
            DataError: one line naming the file, the line and the fix, for bytes that are not UTF-8, a line that is
                not a JSON object, a row without the text, a text that is not a string (null, a number, a list),
                or a file without rows.
        """
        count, columns = 0, {}
        for number, row in self._rows():
            if count == 0:
                self.column = self._pick_column(list(row))
            _text_of(row, self.column, number, self.path)
            columns.update(dict.fromkeys(row))
            count += 1
        if count == 0:
            raise DataError(f"{self.path} has no rows to predict.")
        self.rows_count, self.columns = count, list(columns)
        return count

    def chunks(self, size: int | None = None) -> Iterator[tuple[list[str], list[dict[str, Any]]]]:
        """(texts, rows) of at most `size` (default `CHUNK_ROWS`) rows at a time, in file order (after `scan`)."""
        size = size or CHUNK_ROWS
        texts, rows = [], []
        for number, row in self._rows():
            texts.append(_text_of(row, self.column, number, self.path))
            rows.append(row)
            if len(rows) >= size:
                yield texts, rows
                texts, rows = [], []
        if rows:
            yield texts, rows

    @property
    def arrow_schema(self) -> Any:
        """A Parquet input's own column types (kept in a Parquet output); None for the other formats."""
        if self.suffix != ".parquet":
            return None
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path).schema_arrow

    def _pick_column(self, columns: list[str]) -> str:
        column = self.text_column or ("text" if "text" in columns else columns[0] if len(columns) == 1 else None)
        if column is None or column not in columns:
            raise DataError(
                f"{self.path} has no text column {column or 'text'!r}; its columns are {columns}. Use --text-column."
            )
        return column

    def _rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, row) for each row; a Parquet file's "line" is its row number."""
        if self.suffix == ".parquet":
            yield from _parquet_rows(self.path)
        elif self.suffix == ".txt":
            for number, line in _utf8_lines(self.path):
                if line.strip():
                    yield number, {"text": line.rstrip("\r\n")}
        elif self.suffix in (".csv", ".tsv"):
            csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long texts are valid input (truncated when tokenised)
            lines = (line for _, line in _utf8_lines(self.path))
            yield from _csv_rows(lines, "\t" if self.suffix == ".tsv" else ",", self.path)
        else:
            for number, line in _utf8_lines(self.path):
                if line.strip():
                    yield number, _json_row(line, number, self.path)


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its newline) of a UTF-8 file (a byte-order mark dropped), read a line at a time.

    Raises:
        DataError: at the first line whose bytes are not UTF-8, naming the line and the byte.
    """
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}, line {number}: byte 0x{raw[error.start]:02x} is not UTF-8 text; save the file as UTF-8."
                ) from None
            yield number, line


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own kinds for a file that is not Parquet
        raise DataError(f"Cannot read {path} as Parquet ({str(error).splitlines()[0]}); check the file.") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
        for row in batch.to_pylist():
            number += 1
            yield number, row


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


def _csv_rows(lines: Iterator[str], delimiter: str, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows as dicts; a row wider than the header is an error naming its line, never a silently shortened text,
    except in a one-column file, where an unquoted delimiter is part of the text and the whole line is kept."""
    reader = csv.DictReader(lines, delimiter=delimiter, restkey=_EXTRA)
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
        yield reader.line_num, row
