"""Load a labelled text dataset into train / validation / test splits with a stable label map, and tokenise it.

Datasets stay Arrow tables (memory-mapped by `datasets`) from file to tokens, so a large CSV is never held in
Python lists.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict

from loratune.config import DataArgs
from loratune.data import labelchecks, labelsets
from loratune.data.classes import class_names, encode_classes, one_class_left, read_classes
from loratune.data.labelsets import label_name as _label_name
from loratune.data.sources import LABEL_COLUMNS, load_raw, read_split_file, split_files
from loratune.errors import DataError, first_line
from loratune.task import SINGLE, Task, holds_sets, task_from_data

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence", "content", "review", "question", "document", "utterance", "query")
PAIR_COLUMNS = (
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("text", "text_pair"),
    ("text1", "text2"),
)


@dataclass
class Splits:
    """Train / validation / test datasets with columns `text`, optional `text_pair`, and `label`: an integer for a
    single-label task, a float32 multi-hot list of `len(labels)` for a multi-label one (as `task` holds them)."""

    train: Dataset
    validation: Dataset
    test: Dataset
    labels: list[str]
    has_test: bool = True
    dropped: dict[str, int] = field(default_factory=dict)  # rows lost on loading: empty text or missing label
    task: Task = SINGLE  # as decided from data.task and the data (`task.task_from_data`)

    @property
    def eval_name(self) -> str:
        """The split that 'before' and 'after' are measured on."""
        return "test" if self.has_test else "validation"

    @property
    def eval(self) -> Dataset:
        return self.test if self.has_test else self.validation

    @property
    def is_pair(self) -> bool:
        return "text_pair" in self.train.column_names

    def label_counts(self) -> dict[str, dict[str, int]]:
        """{split: {label name: rows}} (for multi-label, the rows carrying each label), for the report."""
        return {
            name: self.task.label_counts(np.asarray(getattr(self, name)["label"]), self.labels)
            for name in ("train", "validation", "test")
        }


def load_splits(args: DataArgs, seed: int = 42) -> Splits:
    """Load, check, label-encode and subsample the dataset named by `args.path`.

    Multi-label data (see `load_texts`) is encoded as multi-hot vectors over the sorted label names of train.

    Raises:
        DataError: for a missing path, an empty file, a missing or ambiguous column, a single-class train split,
            a label in validation/test that train lacks, a class left with no train row by the carving or the
            subsample, label spellings that differ only in case, or a malformed label set.
    """
    if not args.path:
        raise DataError("No dataset given; pass --data PATH (a folder, a CSV/JSONL/Parquet file, or a hub id).")
    raw, dropped, task = load_texts(args)
    handling = _LABELS_OF_TASK[task.name]
    labels = handling.names(raw["train"])
    raw = DatasetDict({name: handling.encode(ds, name, labels) for name, ds in raw.items()})

    carved = [name for name in ("test", "validation") if name not in raw]
    for name in carved:
        ratio = args.test_ratio if name == "test" else args.validation_ratio
        raw["train"], raw[name] = _carve(raw["train"], ratio, seed, name)
    if carved:
        when = f"once {' and '.join(carved)} {'was' if len(carved) == 1 else 'were'} carved out of it"
        labelchecks.check_every_label_trains(raw, labels, task, f"{when} (too few rows to split stratified)")
    train = _subsample(raw["train"], args.max_train_samples, seed)
    if len(train) < len(raw["train"]):
        when = f"in the {len(train)} rows --max-train-samples keeps (raise it)"
        labelchecks.check_every_label_trains({**raw, "train": train}, labels, task, when)
    present = [n for n, c in task.label_counts(np.asarray(train["label"]), labels).items() if c]
    if len(present) < 2:
        raise handling.too_few(present)
    validation = _subsample(raw["validation"], args.max_eval_samples, seed)
    test = _subsample(raw["test"], args.max_eval_samples, seed)
    return Splits(
        train=train,
        validation=validation,
        test=test,
        labels=labels,
        has_test=args.eval_split == "test",
        dropped=dropped,
        task=task,
    )


def load_texts(args: DataArgs) -> tuple[DatasetDict, dict[str, int], Task]:
    """The splits found, with columns text, optional text_pair, and label as read (not yet encoded), how many
    rows each lost for an empty text or a missing label, and the task; `loratune check-data` checks these.

    For multi-label data (`data.task`, decided by `task.task_from_data`, or `data.label_columns`) each label is a
    sorted list of names (`labelsets.NAMES`); an empty list (an empty cell) is a text none of the labels applies
    to. A single-label row whose label looks missing (`labelchecks.looks_missing`) is dropped and counted.

    Raises:
        DataError: for a missing path, an empty file, a missing or ambiguous column, a malformed label set, or
            label spellings that differ only in case or spaces (unless `data.merge_label_case`).
    """
    if not args.path:
        raise DataError("No dataset given; pass --data PATH (a folder, a CSV/JSONL/Parquet file, or a hub id).")
    raw = load_raw(args)
    columns = _detect_columns(raw["train"], args)
    sizes = {name: len(ds) for name, ds in raw.items()}
    raw = {name: _standardise(ds, name, columns, args) for name, ds in raw.items()}
    task = task_from_data(raw["train"], args.task, args.label_separator)
    raw = {name: _read_labels(ds, name, task, args.label_separator) for name, ds in raw.items()}
    dropped = {name: _count_dropped(ds, name, sizes[name]) for name, ds in raw.items()}
    return DatasetDict(labelchecks.check_spellings(raw, task, args.merge_label_case)), dropped, task


def _detect_columns(ds: Dataset, args: DataArgs) -> tuple[str, str | None, str | None]:
    """The text, text pair and label columns; the label column is None for `data.label_columns`."""
    columns = ds.column_names
    if args.label_columns:
        missing = [c for c in args.label_columns if c not in columns]
        if missing:
            raise DataError(
                f"data.label_columns names {missing}, which the train split lacks; its columns are {columns}. "
                "Fix --label-columns."
            )
    lowered = {c.lower(): c for c in columns}
    for role, given in (
        ("text", args.text_column),
        ("text pair", args.text_pair_column),
        ("label", args.label_column),
    ):
        if given is not None and given not in columns:
            key = {"text": "text_column", "text pair": "text_pair_column", "label": "label_column"}[role]
            raise DataError(f"data.{key}={given!r} is not in the train split; its columns are {columns}.")
    if args.label_columns:
        label, exclude = None, set(args.label_columns)
    else:
        label = args.label_column or _pick(lowered, LABEL_COLUMNS, "label", columns, "label_column")
        exclude = {label}
    text, pair = args.text_column, args.text_pair_column
    if text is None:
        for first, second in PAIR_COLUMNS:
            if first in lowered and second in lowered:
                text, pair = lowered[first], pair or lowered[second]
                break
    if text is None:
        text = _pick(lowered, TEXT_COLUMNS, "text", columns, "text_column", exclude=exclude)
    if text == label:
        raise DataError(f"The text and label columns are both {text!r}; set data.text_column or data.label_column.")
    return text, pair, label


def _pick(lowered: dict[str, str], candidates: tuple[str, ...], role: str, columns: list, key: str, exclude=()) -> str:
    found = [lowered[c] for c in candidates if c in lowered and lowered[c] not in exclude]
    if not found:
        raise DataError(
            f"No {role} column found among {columns}; name it with --{key.replace('_', '-')} "
            f"(looked for {', '.join(candidates)})."
        )
    if len(found) > 1 and role == "label":
        raise DataError(f"Several possible {role} columns {found}; choose one with --{key.replace('_', '-')}.")
    return found[0]


def _standardise(ds: Dataset, split: str, columns: tuple[str, str | None, str | None], args: DataArgs) -> Dataset:
    """The split with columns text, optional text_pair and label, less rows with an empty text (labels are read,
    and rows without one dropped, once the task is known: `_read_labels`)."""
    text, pair, label = columns
    label_columns = [label] if label else list(args.label_columns)
    wanted = [text, *label_columns] + ([pair] if pair else [])
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise DataError(f"The {split} split lacks column(s) {missing}; its columns are {ds.column_names}.")
    ds = ds.select_columns(wanted)
    if label is None:
        ds, label = labelsets.from_columns(ds, split, label_columns), "label"
    mapping = {text: "text", label: "label"} | ({pair: "text_pair"} if pair else {})
    ds = ds.rename_columns({old: new for old, new in mapping.items() if old != new})
    texts = {"text": ds.features["text"]} | ({"text_pair": ds.features["text_pair"]} if pair else {})
    if any(getattr(f, "dtype", "string") not in ("string", "large_string") for f in texts.values()):
        # a JSON text column of numbers (CSV columns are read as text already): texts, before the empty-text filter
        ds = ds.map(lambda b: {k: [_text_or_none(v) for v in b[k]] for k in texts}, batched=True)
    return ds.filter(_has_text, batched=True)


def _has_text(batch: dict[str, list]) -> list[bool]:
    texts = [batch[c] for c in batch if c.startswith("text")]
    return [all(isinstance(t[i], str) and t[i].strip() for t in texts) for i in range(len(batch["label"]))]


def _count_dropped(ds: Dataset, split: str, before: int) -> int:
    """How many rows a split lost for an empty text or a missing label, with a warning when any.

    Raises:
        DataError: when no row is left.
    """
    if len(ds) < before:
        # A large share is more likely a class than holes in the data: a class named "None" or "N/A" would be lost.
        many = (before - len(ds)) > 0.1 * before
        log.warning(
            "Dropped %d of %d %s rows with an empty text or a missing label (empty, NaN, None, null, N/A, or "
            "holding control characters)%s.",
            before - len(ds),
            before,
            split,
            "; if one of these words is a class of yours, give it another name" if many else "",
        )
    if len(ds) == 0:
        raise DataError(f"The {split} split has no row with both a text and a label; check its columns and values.")
    return before - len(ds)


def _read_labels(ds: Dataset, split: str, task: Task, separator: str) -> Dataset:
    """A multi-label split's labels as lists of names; a single-label split's as one value each."""
    return _LABELS_OF_TASK[task.name].read(ds, split, separator)


def _text_or_none(value: Any) -> str | None:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return None if missing else _label_name(value)


def _carve(ds: Dataset, ratio: float, seed: int, name: str) -> tuple[Dataset, Dataset]:
    """Split a share `ratio` off `ds`, stratified by label; multi-label rows by their rarest label (the one with
    the fewest rows among the row's labels; an empty set is a stratum of its own), so a rare label lands on both
    sides. A stratum too small to split makes the split random, with a warning."""
    size = max(1, round(len(ds) * ratio))
    if len(ds) - size < 2:
        raise DataError(f"Too few rows ({len(ds)}) to carve a {name} split out of train; add rows or a {name} file.")
    by = "label"
    if holds_sets(ds.features["label"]):
        by, stratum = "_stratum", labelsets.strata(labelsets.multi_hot(ds, len(ds[0]["label"])))
        ds = ds.add_column(by, stratum.tolist(), feature=ClassLabel(num_classes=int(stratum.max()) + 1))
    try:
        parts = ds.train_test_split(test_size=size, stratify_by_column=by, seed=seed)
    except ValueError as error:  # a class with a single row, or more classes than rows carved, cannot be stratified
        log.warning("Could not stratify the %s split (%s); splitting at random.", name, first_line(error))
        parts = ds.train_test_split(test_size=size, seed=seed)
    if by != "label":
        return parts["train"].remove_columns(by), parts["test"].remove_columns(by)
    return parts["train"], parts["test"]


def _subsample(ds: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit)).flatten_indices()


def load_run_split(args: DataArgs, split: str, labels: list[str], seed: int) -> Dataset:
    """The `split` a run was measured on, rebuilt as the run built it (for `loratune evaluate RUN` without --data):
    the run's data read, carved and subsampled by `load_splits` with the run's `seed`.

    Raises:
        DataError: when the run's data is gone or its labels no longer match the run's.
    """
    try:
        splits = load_splits(args, seed)
    except DataError as error:
        raise DataError(f"The run's own data could not be read ({error}); pass --data PATH.") from None
    if splits.labels != labels:
        raise DataError(
            f"{args.path} now has the labels {splits.labels[:10]}, not the run's {labels[:10]}; "
            "pass --data PATH with the run's data."
        )
    if split not in ("train", "validation", "test"):
        raise DataError(f"Unknown split {split!r}; choose --split train, validation or test.")
    return getattr(splits, split)


def load_eval_split(args: DataArgs, split: str, labels: list[str], task: Task = SINGLE, seed: int = 42) -> Dataset:
    """One split of a dataset, encoded with an existing run's `labels` (for `loratune evaluate --data`).

    A folder gives its `split` file; a single file is used whole. `task` is the run's: a multi-label run's data is
    read as label sets and encoded as multi-hot vectors over `labels`. A subsample (`args.max_eval_samples`) is
    drawn with `seed`, as training draws it: the run's seed gives the run's texts.

    Raises:
        DataError: as `load_splits`, and when the split is missing or has a label the run never saw.
    """
    if not args.path:
        raise DataError("No dataset given; pass --data PATH.")
    path = Path(args.path).expanduser()
    if path.is_file():
        raw = {split: read_split_file(path, args.label_column)}
    elif path.is_dir():
        files = split_files(path)  # by name only: a folder holding just test.csv has a test split, not a train one
        if split not in files:
            raise DataError(f"{path} has no {split} file (it has {sorted(files) or 'none'}); choose one with --split.")
        raw = {split: read_split_file(files[split], args.label_column)}
    else:
        loaded = load_raw(args)
        if split not in loaded:
            raise DataError(f"{args.path} has no {split} split (it has {list(loaded)}); choose one with --split.")
        raw = {split: loaded[split]}
    before = len(raw[split])
    ds = _standardise(raw[split], split, _detect_columns(raw[split], args), args)
    ds = _read_labels(ds, split, task, args.label_separator)
    _count_dropped(ds, split, before)
    encode = _LABELS_OF_TASK[task.name].encode
    return _subsample(encode(ds, split, labels, run_labels=True), args.max_eval_samples, seed)


# How each task names, encodes and checks its labels: class ids over the sorted names (or a ClassLabel's), or
# multi-hot rows over the sorted names found in the train split's sets.
class _LabelHandling(NamedTuple):
    read: Callable[[Dataset, str, str], Dataset]  # the labels as read: one value, or a list of names
    names: Callable[[Dataset], list[str]]  # the label names, in id order, from the train split
    encode: Callable[..., Dataset]  # (ds, split, labels, run_labels=False): ids, or multi-hot rows
    too_few: Callable[[list[str]], DataError]  # the error for a train split with fewer than two labels


_LABELS_OF_TASK = {
    "single": _LabelHandling(read_classes, class_names, encode_classes, one_class_left),
    "multi": _LabelHandling(labelsets.to_name_sets, labelsets.label_names, labelsets.encode, labelsets.one_label_left),
}
