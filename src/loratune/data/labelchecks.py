"""Labels checked like data: labels that only look like labels (empty, NaN, null, N/A, control characters),
spellings of one label that differ only in case or surrounding spaces, and classes the train split lacks once the
splits are made. Each is dropped with a count, merged with a warning, or refused in one line; none becomes a class
silently.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
from datasets import Dataset, Value

from loratune.errors import DataError
from loratune.task import Task

log = logging.getLogger(__name__)

# Words that stand for "no value" in exported tables (pandas, R, SQL, spreadsheets), compared case-folded.
MISSING_WORDS = frozenset({"nan", "none", "null", "n/a", "na", "<na>"})
# What the CSV reader takes as missing in a label column: numbers stay numbers (0, 1, NaN: pandas reads a column of
# class ids with a NaN among them as text, '0', '1', 'NaN'). Other spellings are dropped later by `looks_missing`.
CSV_MISSING = ("", "NaN", *sorted({s for w in MISSING_WORDS for s in (w, w.upper(), w.title())}))
SHOWN = 3  # groups of spellings, or classes, named in one message


def has_control_characters(value: Any) -> bool:
    """Whether a label (or any name of a list) holds a control character, such as NUL or ESC, inside its text."""
    if isinstance(value, list):
        return any(has_control_characters(v) for v in value)
    return isinstance(value, str) and any(unicodedata.category(c) == "Cc" for c in value.strip())


def looks_missing(value: Any) -> bool:
    """Whether a label is no label: None, NaN, an empty or blank string, a missing-value word (NaN, None, null,
    N/A, NA) or a text holding control characters. A number (a class id such as 0) is always a label."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    if not isinstance(value, str):
        return False
    text = value.strip()
    return not text or text.casefold() in MISSING_WORDS or has_control_characters(text)


# -- spellings that differ only in case or surrounding spaces ------------------------------------------------------


class _Spellings(NamedTuple):
    found: Callable[[Dataset], Iterable[str]]  # the distinct label spellings of a split
    count: Callable[[Dataset], Counter]  # rows per spelling
    rename: Callable[[Dataset, dict[str, str]], Dataset]  # the split with spellings replaced


def _class_spellings(ds: Dataset) -> list[str]:
    feature = ds.features["label"]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        return []  # numbers and a hub dataset's ClassLabel names have one spelling each
    return [v for v in ds.unique("label") if isinstance(v, str)]


def _rename_classes(ds: Dataset, merged: dict[str, str]) -> Dataset:
    return ds.map(lambda b: {"label": [merged.get(v, v) for v in b["label"]]}, batched=True, features=ds.features)


def _rename_in_sets(ds: Dataset, merged: dict[str, str]) -> Dataset:
    def rename(batch: dict[str, list]) -> dict[str, list]:
        return {"label": [sorted({merged.get(n, n) for n in names}) for names in batch["label"]]}

    return ds.map(rename, batched=True, features=ds.features)


# How each task's labels are spelled: one value per row (names as read, spaces kept), or a list of names per row.
_SPELLINGS_OF_TASK = {
    "single": _Spellings(
        _class_spellings,
        lambda ds: Counter(v for v in ds["label"] if isinstance(v, str)),
        _rename_classes,
    ),
    "multi": _Spellings(
        lambda ds: {n for names in ds["label"] for n in names},
        lambda ds: Counter(n for names in ds["label"] for n in set(names)),
        _rename_in_sets,
    ),
}


def check_spellings(splits: dict[str, Dataset], task: Task, merge: bool) -> dict[str, Dataset]:
    """Refuse, or with `merge` merge, label spellings that differ only in case or surrounding spaces ('Positive'
    and 'positive', 'good ' and 'good'), over all splits. A merged group takes its most frequent spelling (ties:
    the first in sorted order), with one warning naming each merge.

    Args:
        splits: split name -> dataset whose labels are as read (`splits.load_texts`).
        task: the data's task.
        merge: `data.merge_label_case`.

    Returns:
        The splits, renamed where spellings were merged.

    Raises:
        DataError: naming the spellings and their row counts, and the two fixes, when `merge` is off.
    """
    spellings = _SPELLINGS_OF_TASK[task.name]
    variants: dict[str, set[str]] = {}
    for ds in splits.values():
        for name in spellings.found(ds):
            variants.setdefault(name.strip().casefold(), set()).add(name)
    groups = [sorted(found) for _, found in sorted(variants.items()) if len(found) > 1]
    if not groups:
        return splits
    counts = sum((spellings.count(ds) for ds in splits.values()), Counter())
    if not merge:
        shown = ", ".join(" vs ".join(_counted(s, counts) for s in group) for group in groups[:SHOWN])
        raise DataError(
            f"Labels differ only in case or surrounding spaces: {shown}{_more(len(groups))}; fix the data, "
            "or pass --merge-label-case to merge each group into its most frequent spelling."
        )
    merged, said = {}, []
    for group in groups:
        target = min(group, key=lambda s: (-counts[s], s))
        merged.update({s: target for s in group if s != target})
        said.append(f"{', '.join(_counted(s, counts) for s in group if s != target)} into {_counted(target, counts)}")
    log.warning("Merged labels that differ only in case or surrounding spaces: %s.", "; ".join(said))
    return {name: spellings.rename(ds, merged) for name, ds in splits.items()}


def _counted(spelling: str, counts: Counter) -> str:
    n = counts[spelling]
    return f"{spelling!r} ({n} {'row' if n == 1 else 'rows'})"


def _more(n: int) -> str:
    return f" (and {n - SHOWN} more)" if n > SHOWN else ""


# -- every class in the train split -----------------------------------------------------------------------------


def check_every_label_trains(splits: dict[str, Dataset], labels: list[str], task: Task, when: str) -> None:
    """Refuse a train split with no row of some class (multi-label: no text carrying some label), which the model
    would have to predict without ever seeing it.

    Args:
        splits: split name -> encoded dataset; "train" among them.
        labels: the label names, in id order.
        task: the data's task.
        when: how train lost them, e.g. "once test was carved out of train".

    Raises:
        DataError: naming the first few such classes, how many rows of each the other splits hold, and the fix.
    """
    counts = {name: task.label_counts(np.asarray(ds["label"]), labels) for name, ds in splits.items()}
    lacking = [label for label, n in counts["train"].items() if not n]
    if not lacking:
        return
    elsewhere = {label: sum(c[label] for name, c in counts.items() if name != "train") for label in lacking}
    shown = ", ".join(_counted(label, Counter(elsewhere)) for label in lacking[:SHOWN])
    units = task.unit + ("es" if task.unit.endswith("s") else "s")
    raise DataError(
        f"The train split has no row of {len(lacking)} {task.unit if len(lacking) == 1 else units} {when}: "
        f"{shown} in the other splits{_more(len(lacking))}; add rows of "
        f"{'it' if len(lacking) == 1 else 'them'} to the data, or remove {'it' if len(lacking) == 1 else 'them'}."
    )
