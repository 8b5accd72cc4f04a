"""Checks on the data before training: duplicates within and across splits, texts with conflicting labels, the
label balance, very short texts, and truncation. They warn and never stop a run, unless `data.strict` is set.

The checks compare texts only (exact, and normalised: case-folded with whitespace collapsed), never what labels
mean. A multi-label text's label is its set of names, so texts conflict when their label sets differ, and the label
counts are how many train texts carry each label. They run on the splits as the run uses them (after subsampling).
No torch here; the result is plain JSON (`runs.files.DATA_CHECKS_FILE`).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any

from loratune.errors import DataError
from loratune.formatting import NO_LABELS
from loratune.schema import SET_SEPARATOR
from loratune.task import Task, task_of

SPLITS = ("train", "validation", "test")
SHORT_WORDS = 2  # a text of at most this many words is "very short"
IMBALANCE_WARN = 10.0  # warn when the largest train class has this many times the rows of the smallest
TRUNCATED_WARN = 0.01  # warn when more than this share of a split is cut to max_length
EXAMPLES = 5


def normalise(text: str) -> str:
    """Case-folded, whitespace collapsed: 'A  Film ' and 'a film' are the same text."""
    return " ".join(text.split()).casefold()


def _keys(ds: Any) -> list[str]:
    texts = ds["text"]
    if "text_pair" in ds.column_names:  # a pair is one text for these checks
        return [f"{a}\n{b}" for a, b in zip(texts, ds["text_pair"], strict=True)]
    return list(texts)


def _class_names(ds: Any, label_names: list[str] | None) -> list[list[str]]:
    """Each row's class as a one-name list: the name of its id, or its label as read."""
    return [[label_names[v]] if label_names else [str(v)] for v in ds["label"]]


def _set_names(ds: Any, label_names: list[str] | None) -> list[list[str]]:
    """Each row's label names: from a multi-hot vector over `label_names`, or a list of names as read."""
    out = []
    for value in ds["label"]:
        if label_names and value and not isinstance(value[0], str):
            out.append([label_names[j] for j, on in enumerate(value) if on > 0.5])
        else:
            out.append([str(v) for v in value])
    return out


# How each task's rows name their labels.
_NAMES_OF_TASK = {"single": _class_names, "multi": _set_names}


def _conflicts(keys: list[str], labels: list[str]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = defaultdict(set)
    for key, label in zip(keys, labels, strict=True):
        seen[key].add(label)
    return {key: found for key, found in seen.items() if len(found) > 1}


def compute_data_checks(
    splits: dict[str, Any], task: Task, dropped: dict[str, int] | None = None, label_names: list[str] | None = None
) -> dict[str, Any]:
    """Check the splits of a dataset.

    Args:
        splits: split name -> `datasets.Dataset` with columns text, optional text_pair, and label: ids (or, for
            multi-label data, multi-hot vectors) over `label_names`, or labels as read (a value, or a list of names)
            when it is None.
        task: the data's task.
        dropped: rows each split lost on loading for an empty text or a missing label.
        label_names: the names of label ids.

    Returns:
        JSON-ready dict: `splits` (per split: rows, duplicate texts, conflicting texts, short texts, dropped rows),
        `shared` (per pair of splits: texts in both, exact and normalised, with examples), `conflict_examples`,
        `label_counts` and `imbalance_ratio` of train, `task` ("single" or "multi"), and `warnings` (one line each).
    """
    keys = {s: _keys(ds) for s, ds in splits.items()}
    sets = {s: _NAMES_OF_TASK[task.name](ds, label_names) for s, ds in splits.items()}
    # a label set is compared (and shown) as its sorted names joined: "anger|joy"; a class as its name
    labels = {s: [SET_SEPARATOR.join(sorted(names)) or NO_LABELS for names in rows] for s, rows in sets.items()}
    per_split, conflict_examples = {}, []
    for split in splits:
        exact, normal = keys[split], [normalise(k) for k in keys[split]]
        conflicts = _conflicts(exact, labels[split])
        per_split[split] = {
            "rows": len(exact),
            "duplicate_texts": len(exact) - len(set(exact)),  # rows repeating an earlier row's text
            "duplicate_texts_normalised": len(normal) - len(set(normal)),
            "conflicting_texts": len(conflicts),  # distinct texts seen with more than one label
            "conflicting_texts_normalised": len(_conflicts(normal, labels[split])),
            "short_texts": sum(len(k.split()) <= SHORT_WORDS for k in exact),
            "dropped_rows": (dropped or {}).get(split, 0),
        }
        conflict_examples += [
            {"split": split, "text": key, "labels": sorted(found)} for key, found in list(conflicts.items())[:EXAMPLES]
        ]
    shared = {}
    for a, b in combinations([s for s in SPLITS if s in splits], 2):
        both = set(keys[a]) & set(keys[b])
        both_normal = {normalise(k) for k in keys[a]} & {normalise(k) for k in keys[b]}
        shared[f"{a}/{b}"] = {"texts": len(both), "texts_normalised": len(both_normal), "examples": sorted(both)[:3]}
    counts = {name: 0 for name in label_names or sorted({n for names in sets["train"] for n in names})}
    for names in sets["train"]:  # how many train texts carry each label
        for name in names:
            counts[name] += 1
    smallest = min(counts.values(), default=0)
    checks = {
        "task": task.name,
        "splits": per_split,
        "shared": shared,
        "conflict_examples": conflict_examples,
        "label_counts": counts,
        "imbalance_ratio": max(counts.values()) / smallest if smallest else None,  # most / least frequent label
    }
    checks["warnings"] = _warnings(checks)
    return checks


def add_truncation(checks: dict[str, Any], truncated: dict[str, int], max_length: int) -> dict[str, Any]:
    """The checks with each split's count of texts cut to `max_length` tokens (known once tokenised)."""
    for split, n in truncated.items():
        if split in checks["splits"]:
            checks["splits"][split]["truncated"] = n
    checks["max_length"] = max_length
    checks["warnings"] = _warnings(checks)
    return checks


def _warnings(checks: dict[str, Any]) -> list[str]:
    out = []
    for pair, found in checks["shared"].items():
        exact, loose = found["texts"], found["texts_normalised"]
        if loose:
            both = f"in both {pair.replace('/', ' and ')}"
            out.append(_counted(exact, loose, ("appears", "appear"), both, "once case and spaces are normalised"))
    for split, found in checks["splits"].items():
        if found["conflicting_texts_normalised"]:
            what = task_of(checks["task"]).conflict
            exact, loose = found["conflicting_texts"], found["conflicting_texts_normalised"]
            out.append(
                _counted(exact, loose, ("carries", "carry"), what, "once case and spaces are normalised", split)
            )
        if found["dropped_rows"]:
            rows = found["dropped_rows"]
            out.append(
                f"{rows} {split} {'row was' if rows == 1 else 'rows were'} dropped (empty text or missing label)"
            )
        if found.get("truncated", 0) > TRUNCATED_WARN * max(found["rows"], 1):
            out.append(
                f"{_texts(found['truncated'], 'is', 'are', split)} longer than {checks.get('max_length')} tokens"
            )
    ratio = checks["imbalance_ratio"]
    if ratio is None or ratio >= IMBALANCE_WARN:
        shown = "∞" if ratio is None else f"{ratio:.1f}"
        what = task_of(checks["task"]).unit
        out.append(f"train labels are imbalanced (largest / smallest {what}: {shown})")
    return out


def _counted(exact: int, loose: int, verbs: tuple[str, str], what: str, loosely: str, split: str = "") -> str:
    """A warning worded for its counts: '2 texts appear in both train and test', with the count found only once
    normalised said apart ('1 text appears ... once case and spaces are normalised'; '2 texts ... (3 once ...)')."""
    if exact == 0:
        return f"{_texts(loose, *verbs, split)} {what} {loosely}"
    extra = f" ({loose} {loosely})" if loose != exact else ""
    return f"{_texts(exact, *verbs, split)} {what}{extra}"


def _texts(n: int, verb_one: str, verb_many: str, split: str = "") -> str:
    """'1 test text carries' / '3 test texts carry'."""
    noun = f"{split} text" if split else "text"
    return f"{n} {noun} {verb_one}" if n == 1 else f"{n} {noun}s {verb_many}"


def format_block(checks: dict[str, Any]) -> str:
    """The checks as a short block for the terminal: one line of counts, then one line per warning."""
    s = checks["splits"]
    ratio = checks["imbalance_ratio"]
    rows = ", ".join(f"{k} {v['rows']:,}" for k, v in s.items())
    duplicates = ", ".join(f"{k} {v['duplicate_texts']:,}" for k, v in s.items())
    imbalance = "∞" if ratio is None else f"{ratio:.1f}"
    counts = (
        f"data checks: {rows} rows; duplicates {duplicates}; "
        f"shared train/test {checks['shared'].get('train/test', {}).get('texts', 0):,}; "
        f"conflicting train {s['train']['conflicting_texts']:,}; imbalance {imbalance}"
    )
    return "\n".join([counts, *[f"  warning: {w}" for w in checks["warnings"]]])


def check_strict(checks: dict[str, Any], where: str) -> None:
    """Raise for a `--strict-data` run whose data drew any warning."""
    if checks["warnings"]:
        first = checks["warnings"][0]
        more = f" (and {len(checks['warnings']) - 1} more, see {where})" if len(checks["warnings"]) > 1 else ""
        raise DataError(f"Data checks failed under --strict-data: {first}{more}; fix the data or drop --strict-data.")
