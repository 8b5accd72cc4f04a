"""Where a dataset's rows come from: a folder of split files, one file, or a hub dataset, read with `datasets`
into Arrow tables. Checks that need the raw file (encoding, repeated header names, a header with no rows) are
made here, before `datasets` fails on them with a message that does not say what to fix.
"""

from __future__ import annotations

import codecs
import csv
import logging
import re
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from loratune.config import DataArgs
from loratune.data.labelchecks import CSV_MISSING
from loratune.errors import DataError, first_line

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("label", "labels", "category", "class", "intent", "target", "sentiment")
SPLIT_NAMES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev", "development"),
    "test": ("test", "testing", "eval"),
}
FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_FORMAT_NAMES = "CSV, TSV, JSONL (or .json) and Parquet"


def load_raw(args: DataArgs) -> DatasetDict:
    """The splits found at `args.path` (a folder, one file, or a hub id), as read: no columns renamed yet.

    Raises:
        DataError: for a missing path, an empty or malformed file, or a folder or hub dataset with no train split.
    """
    path = Path(args.path).expanduser()
    if path.is_dir():
        files = _split_files(path)
    elif path.is_file():
        if path.suffix.lower() not in FORMATS:
            raise DataError(f"Cannot read {path.name}: loratune reads {_FORMAT_NAMES} files; save it as one of those.")
        files = {"train": path}
    elif path.suffix.lower() in FORMATS or args.path.startswith((".", "/", "~")) or args.path.count("/") > 1:
        raise DataError(f"Data path {args.path!r} does not exist; check the path, or give a hub dataset id.")
    else:
        return _load_hub(args)
    return DatasetDict({split: read_split_file(file, args.label_column) for split, file in files.items()})


def read_split_file(file: Path, label_column: str | None = None) -> Dataset:
    """One split's file (see `read_file`), refused in one line when it is empty or holds a header alone."""
    if file.stat().st_size == 0:
        raise DataError(f"{file} is empty; it needs a header row and at least one labelled row.")
    ds = read_file(file, label_column)
    if len(ds) == 0:
        raise DataError(f"{file} has a header but no rows; add labelled rows.")
    return ds


def recorded_path(path: str) -> str:
    """`path` as a run folder records it: a local file or folder made absolute, so that `loratune evaluate RUN`
    finds the run's data from any working directory; a hub id as given."""
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


def split_files(folder: Path) -> dict[str, Path]:
    """The folder's files named after a split (train, validation, test and their aliases), by split."""
    found: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.suffix.lower() not in FORMATS or not file.is_file():
            continue
        for split, names in SPLIT_NAMES.items():
            if file.stem.lower() in names:
                if split in found:
                    raise DataError(f"{folder} has two {split} files ({found[split].name}, {file.name}); keep one.")
                found[split] = file
    return found


def _split_files(folder: Path) -> dict[str, Path]:
    found = split_files(folder)
    if "train" not in found:
        data_files = [f.name for f in folder.iterdir() if f.suffix.lower() in FORMATS and f.is_file()]
        if len(data_files) == 1:
            return {"train": folder / data_files[0]}
        raise DataError(
            f"{folder} has no train file; name it train.csv (or .jsonl / .parquet), with optional "
            f"validation and test files beside it. Found: {sorted(data_files) or 'no data files'}."
        )
    return found


def read_file(file: Path, label_column: str | None = None) -> Dataset:
    """One CSV, TSV, JSONL or Parquet file as a Dataset; a file that cannot be read is a one-line DataError.

    Every CSV column but the label column (`label_column`, else one named as in `LABEL_COLUMNS`) is read as text:
    pandas would make a column of digits int64 ("007" -> 7), which is then no text at all.
    """
    fmt = FORMATS[file.suffix.lower()]
    if fmt != "parquet":
        _check_utf8(file)
    kwargs: dict[str, Any] = {"sep": "\t"} if file.suffix.lower() == ".tsv" else {}
    if fmt == "csv":
        header = _check_csv_header(file, kwargs.get("sep", ","))
        labels = {label_column} if label_column else {c for c in header if c.strip().lower() in LABEL_COLUMNS}
        kwargs["converters"] = {c: str for c in header if c not in labels}
        # Only an empty cell is missing in a text: pandas would also drop texts such as "NA", "null" or "None". In a
        # label column NaN, null, N/A... are missing too, so that class ids stay numbers (0, 1) around them.
        missing = {c: list(CSV_MISSING) if c in labels else [""] for c in header}
        kwargs.update(keep_default_na=False, na_values=missing or [""])
    if fmt == "csv" and _header_only(file, kwargs.get("sep", ",")):
        # datasets fails on such a file with "Instruction 'train' corresponds to no data!", which says nothing.
        raise DataError(f"{file} has a header but no rows; add labelled rows.")
    library = logging.getLogger("datasets")
    level = library.level
    # datasets logs a malformed file's error (twice: its own handler and the root's) before it raises; the
    # DataError below says it once, with the line.
    library.setLevel(logging.CRITICAL)
    try:
        # keep_in_memory=False: datasets writes an Arrow cache and memory-maps it, so big files stay on disk.
        ds = datasets.load_dataset(fmt, data_files=str(file), split="train", **kwargs)
    except Exception as error:  # datasets raises many types for a malformed file
        raise DataError(f"Could not read {file} as {fmt.upper()}: {_read_problem(error)}") from error
    finally:
        library.setLevel(level)
    return ds


def _read_problem(error: BaseException) -> str:
    """What is wrong with a file that did not read, from the reader's own error at the bottom of the chain (datasets
    wraps it in "An error occurred while generating the dataset"), with the line and the fix."""
    cause = error
    while (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    text = first_line(cause)
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if fields:
        expected, line, saw = fields.groups()
        return (
            f"line {line} has {saw} fields but the header has {expected}; put a text that contains the separator "
            'in double quotes ("like, this").'
        )
    quote = re.search(r"EOF inside string starting at row (\d+)", text)
    if quote:  # pandas counts rows after the header from 1: row N is line N + 1
        return f'a double quote opened on line {int(quote.group(1)) + 1} is never closed; close it or double it ("").'
    return f"{text}. Check the file's format."


def _check_utf8(file: Path) -> None:
    # Readers disagree on bad bytes: some fail late, deep inside Arrow, some replace them silently.
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with file.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{file} is not valid UTF-8 (byte {offset + error.start}); save it as UTF-8 and retry."
                ) from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(
                f"{file} is not valid UTF-8 (it ends mid-character); save it as UTF-8 and retry."
            ) from None


def _check_csv_header(file: Path, sep: str) -> list[str]:
    """The header's column names, as pandas will read them."""
    # pandas renames a repeated column to "text.1" and goes on; which one holds the texts is then a guess
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            raw = next(csv.reader(handle, delimiter=sep), [])
    except csv.Error:
        return []  # a header the csv module cannot parse; datasets reports it
    header = [name.strip() for name in raw]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{file} has more than one column named {repeated}; rename or remove the extra ones.")
    return raw


def _header_only(file: Path, sep: str) -> bool:
    with file.open(newline="", encoding="utf-8", errors="replace") as handle:
        rows = csv.reader(handle, delimiter=sep)
        try:
            next(rows, None)
            return not any(any(cell.strip() for cell in row) for row in rows)
        except csv.Error:  # e.g. a field over csv.field_size_limit(): there are rows, let datasets read them
            return False


def _load_hub(args: DataArgs) -> DatasetDict:
    try:
        loaded = datasets.load_dataset(args.path, args.subset)
    except Exception as error:
        first = first_line(error)
        raise DataError(
            f"Could not load dataset {args.path!r} from the hub ({first}); check the id and network, or pass a "
            "local folder or file."
        ) from error
    splits = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            if name in loaded:
                splits[split] = loaded[name]
                break
    if "train" not in splits:
        raise DataError(f"Dataset {args.path!r} has no train split (it has {list(loaded)}).")
    # A hub test split without labels (GLUE marks them -1) cannot measure anything; carve one from train instead.
    for split in ("validation", "test"):
        if split in splits and _unlabelled(splits[split]):
            log.warning("The hub %s split has no labels; carving one out of train instead.", split)
            del splits[split]
    return DatasetDict(splits)


def _unlabelled(ds: Dataset) -> bool:
    for column in LABEL_COLUMNS:
        if column in ds.column_names:
            sample = ds.select(range(min(len(ds), 100)))[column]
            return all(v is None or v == -1 for v in sample)
    return False
