"""Single-label labels: each row's class read as one value (rows whose label only looks like one dropped), the
class names in id order, and the rows encoded as class ids; `labelsets` does the same for label sets."""

from __future__ import annotations

import json
from typing import Any

from datasets import ClassLabel, Dataset, Value

from loratune.data.labelchecks import looks_missing
from loratune.data.labelsets import label_name, unknown_labels_error
from loratune.errors import DataError
from loratune.task import holds_sets, single_task_refusal


def read_classes(ds: Dataset, split: str, separator: str) -> Dataset:
    """The split less rows whose label looks missing (`labelchecks.looks_missing`: NaN, null, N/A, blank, control
    characters), each label one value: as read, or as text where a JSON column mixes types.

    Raises:
        DataError: for list labels (a multi-label column under a single-label task), or a label that is an object.
    """
    ds = _without_missing(ds)
    if holds_sets(ds.features["label"]) and len(ds):
        raise single_task_refusal(ds, split)
    if not isinstance(ds.features["label"], (ClassLabel, Value)):
        # a JSON column of mixed types (e.g. "pos" and 0): make every label a string, refuse lists and objects
        features = ds.features.copy()
        features["label"] = Value("string")
        ds = ds.map(
            lambda b: {"label": [_scalar_label(v, split) for v in b["label"]]}, batched=True, features=features
        )
    return ds


def _without_missing(ds: Dataset) -> Dataset:
    feature = ds.features["label"]
    if isinstance(feature, ClassLabel):
        return ds
    if isinstance(feature, Value) and not any(looks_missing(v) for v in ds.unique("label")):
        return ds  # the usual case, decided from the distinct values without a pass over the rows
    return ds.filter(lambda b: [not looks_missing(v) for v in b["label"]], batched=True)


def _scalar_label(value: Any, split: str) -> str:
    if isinstance(value, (list, dict)):
        raise DataError(f"The {split} split has a label {json.dumps(value)[:40]}; each label must be one value.")
    return label_name(value)


def class_names(train: Dataset) -> list[str]:
    """The class names in id order: a ClassLabel's own, integers in numeric order, else names sorted."""
    feature = train.features["label"]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = train.unique("label")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() for v in values):
        return [str(v) for v in sorted({int(v) for v in values})]
    return sorted({label_name(v) for v in values})


def encode_classes(ds: Dataset, split: str, labels: list[str], run_labels: bool = False) -> Dataset:
    """The split with each label as its class id over `labels` (a ClassLabel feature).

    Raises:
        DataError: for a label `labels` lacks.
    """
    if isinstance(ds.features["label"], ClassLabel) and list(ds.features["label"].names) == labels:
        return ds
    index = {name: i for i, name in enumerate(labels)}

    def encode(batch: dict[str, list]) -> dict[str, list]:
        names = [label_name(v) for v in batch["label"]]
        unknown = sorted({n for n in names if n not in index})
        if unknown:
            raise unknown_labels_error(split, unknown, labels, run_labels)
        return {"label": [index[n] for n in names]}

    features = ds.features.copy()
    features["label"] = ClassLabel(names=labels)
    return ds.map(encode, batched=True, features=features)


def one_class_left(present: list[str]) -> DataError:
    """The error for a train split with a single class."""
    return DataError(
        f"The train split has a single class ({present[0]!r}); a classifier needs at least two. "
        "Check data.label_column or the data file."
    )
