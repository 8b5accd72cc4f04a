"""Multi-label labels: tell a dataset whose texts carry sets of labels from a single-label one, read each row's
set of label names, and encode the sets as multi-hot vectors.

A label set arrives in one of three forms: a list (a JSONL array, a Parquet list column), names joined by
`data.label_separator` in one cell ("anger|joy"), or several 0/1 columns named by `data.label_columns`. Each is
first read into a sorted list of names (`NAMES`), which `loratune check-data` compares, then encoded against the
train split's label names as a float32 multi-hot vector (`MULTI_HOT`), which training and evaluation read.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, List, Value

from loratune.data.labelchecks import has_control_characters, looks_missing
from loratune.errors import DataError
from loratune.task import holds_sets

NAMES = List(Value("string"))
MULTI_HOT = List(Value("float32"))
_TRUE = {"1", "1.0", "true"}
_FALSE = {"0", "0.0", "false"}


def label_name(value: Any) -> str:
    """One spelling per label whatever the reader made of it: 1, 1.0 and " 1" are all "1"."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value).strip()


def unknown_labels_error(split: str, unknown: list[str], labels: list[str], run_labels: bool) -> DataError:
    """The error for labels in `split` that train (or the run being evaluated) lacks; long lists are cut short,
    so the line stays readable when there are hundreds of labels (label sets read as single labels)."""
    shown_unknown, shown_labels = _few(unknown, 5), _few(labels, 10)
    if run_labels:
        return DataError(
            f"The {split} split has label(s) {shown_unknown} that the run was not trained on; the run's labels: "
            f"{shown_labels}. Evaluate on data labelled with those names."
        )
    return DataError(
        f"The {split} split has label(s) {shown_unknown} that train lacks; known labels: {shown_labels}. "
        "Fix the labels, or add train rows of them, or remove them from the data."
    )


def _few(names: list[str], limit: int) -> str:
    if len(names) <= limit:
        return str(names)
    return f"{str(names[:limit])[:-1]}, ... ({len(names)} in all)]"


def from_columns(ds: Dataset, split: str, columns: list[str]) -> Dataset:
    """Replace the 0/1 `columns` with a `label` column of the names of those set to 1, dropping a row where a cell
    is empty or looks missing (NaN, null, N/A): whether that label applies is unknown, which is not "no".

    Raises:
        DataError: for a cell other than 0/1, "0"/"1" or true/false, naming its column and value.
    """

    def flag(value: Any, column: str) -> bool | None:
        if looks_missing(value):
            return None
        if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
            return bool(value)
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise DataError(
            f"The {split} split's label column {column!r} has the value {str(value)[:40]!r}; label columns hold 0 "
            "or 1 (or true/false). Fix the value or leave the column out of --label-columns."
        )

    def combine(batch: dict[str, list]) -> dict[str, list]:
        out = []
        for i in range(len(batch[columns[0]])):
            flags = {c: flag(batch[c][i], c) for c in columns}
            out.append(None if None in flags.values() else sorted(c for c, on in flags.items() if on))
        return {"label": out}

    features = ds.features.copy()
    for column in columns:
        del features[column]
    features["label"] = NAMES
    ds = ds.map(combine, batched=True, remove_columns=columns, features=features)
    return ds.filter(lambda b: [v is not None for v in b["label"]], batched=True)


def to_name_sets(ds: Dataset, split: str, separator: str) -> Dataset:
    """The split with each label read as a sorted list of names: a list as it is, a string split at `separator`.

    An empty cell (or None, NaN, or a missing-value word such as null: `labelchecks.looks_missing`) is the empty
    set, a text none of the labels applies to, kept and trained on; a row whose label holds a control character
    is dropped as one with a missing label.

    Raises:
        DataError: for an empty name ("a||b"), or a name inside a list that holds the separator.
    """
    feature = ds.features["label"]
    inner = feature.feature if holds_sets(feature) else feature

    def name(value: Any) -> str:
        if isinstance(inner, ClassLabel) and isinstance(value, int):
            return inner.int2str(value)
        return "" if value is None else label_name(value)

    def parse(value: Any) -> list[str]:
        if not isinstance(value, list) and looks_missing(value):
            return []
        if isinstance(value, list):
            names = [name(v) for v in value]
            if not all(names):
                raise DataError(f"The {split} split has an empty label name in {json.dumps(value)[:60]}; remove it.")
            for n in names:
                if separator in n:
                    raise DataError(
                        f"The {split} split has the label name {n!r}, which holds the label separator {separator!r}; "
                        "rename the label or choose another --label-separator."
                    )
            return sorted(set(names))
        cell = name(value)
        names = [n.strip() for n in cell.split(separator)]
        if not all(names):
            raise DataError(
                f"The {split} split has the label {cell[:60]!r}, with an empty name between {separator!r} "
                f"separators; remove the extra {separator!r}."
            )
        return sorted(set(names))

    ds = ds.filter(lambda b: [not has_control_characters(v) for v in b["label"]], batched=True)
    features = ds.features.copy()
    features["label"] = NAMES
    return ds.map(lambda b: {"label": [parse(v) for v in b["label"]]}, batched=True, features=features)


def one_label_left(present: list[str]) -> DataError:
    """The error for a train split whose label sets hold fewer than two names."""
    return DataError(
        f"The train split's label sets hold {len(present)} label name(s) {present}; a classifier needs at least "
        "two. Check data.label_column, data.label_columns or the data file."
    )


def label_names(train: Dataset) -> list[str]:
    """The sorted names found in the train split's label sets: the same order on every run."""
    return sorted({n for names in train["label"] for n in names})


def encode(ds: Dataset, split: str, labels: list[str], run_labels: bool = False) -> Dataset:
    """The split with each label set as a multi-hot float32 vector over `labels`.

    Raises:
        DataError: for a name that `labels` lacks.
    """
    index = {n: i for i, n in enumerate(labels)}

    def encode_batch(batch: dict[str, list]) -> dict[str, list]:
        unknown = sorted({n for names in batch["label"] for n in names if n not in index})
        if unknown:
            raise unknown_labels_error(split, unknown, labels, run_labels)
        rows = []
        for names in batch["label"]:
            row = [0.0] * len(labels)
            for n in names:
                row[index[n]] = 1.0
            rows.append(row)
        return {"label": rows}

    features = ds.features.copy()
    features["label"] = MULTI_HOT
    return ds.map(encode_batch, batched=True, features=features)


def multi_hot(ds: Dataset, num_labels: int) -> np.ndarray:
    """The label column as a (rows, num_labels) array."""
    return np.asarray(ds["label"], dtype=np.float32).reshape(len(ds), num_labels)


def strata(matrix: np.ndarray) -> np.ndarray:
    """Each row's rarest label (fewest rows in `matrix` among the labels it carries); an empty set is its own
    stratum, numbered after the labels. Stratifying on it keeps a rare label on both sides of a split."""
    counts = matrix.sum(axis=0)
    rarest = np.where(matrix > 0.5, counts, np.inf).argmin(axis=1)
    return np.where(matrix.max(axis=1, initial=0.0) > 0.5, rarest, matrix.shape[1])
