"""Property-based tests for data.splits.load_splits: random, often broken, CSV and JSONL files either load into
consistent splits or fail with a one-line DataError, never another exception."""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from pathlib import Path

import datasets
import pytest
from conftest import make_rows, write_csv
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from loratune.config import DataArgs
from loratune.data.batches import tokenize
from loratune.data.splits import load_splits
from loratune.errors import DataError

datasets.disable_caching()
datasets.disable_progress_bars()

MAIN = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

WORDS = ["great", "awful", "film", "NA", "null", "None", "nan", "true", "0", "1.5", "é", "日本", "😀", ""]
NASTY = ['"', "'", ",", "\n", "\r\n", "\t", " ", "\x00", "\\", "\ufeff", ";", "{", "}"]
texts = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.lists(st.sampled_from(WORDS + NASTY), max_size=8).map("".join),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.builds(lambda n: "long " * n, st.integers(200, 600)),
)
labels = st.one_of(
    st.sampled_from(["pos", "neg", "neu", " pos", "pos ", "", "NA"]),
    st.integers(0, 3),
    st.sampled_from([0.0, 1.0, 2.5, math.nan]),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
)
rows = st.lists(st.tuples(texts, labels), min_size=0, max_size=25)
headers = st.sampled_from(
    [
        ["text", "label"],
        ["\ufefftext", "label"],
        ["text", "label", "label"],
        ["text", "text", "label"],
        ["sentence", "label", "extra"],
        ["text"],
        ["Text", "Label"],
        ["text", "label", "sentiment"],
        ["", "label"],
    ]
)


def _cell(value) -> str:
    return "" if value is None else str(value)


def _csv_bytes(header: list[str], body: list[tuple], bom: bool, bad_bytes: bool) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for text, label in body:
        cells = [_cell(text), _cell(label)] + [_cell(label)] * (len(header) - 2)
        writer.writerow(cells[: len(header)])
    data = buffer.getvalue().encode("utf-8")
    if bad_bytes:
        data = data.replace(b"a", b"\xff\xfe", 1) + b"\x80\n"
    return (b"\xef\xbb\xbf" if bom else b"") + data


def _jsonl_bytes(header: list[str], body: list[tuple], bad_bytes: bool, broken_line: bool) -> bytes:
    lines = []
    for text, label in body:
        row = {header[0]: text}
        for key in header[1:]:
            row[key] = label
        lines.append(json.dumps(row, allow_nan=True))
    if broken_line:
        lines.append('{"text": "unterminated')
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if bad_bytes:
        data = b'{"text": "\xff\xfe", "label": "pos"}\n' + data
    return data


def _check_loaded(splits) -> None:
    names = splits.labels
    assert len(names) >= 2
    assert all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
    for split in (splits.train, splits.validation, splits.test):
        assert len(split) > 0
        assert {"text", "label"} <= set(split.column_names)
        assert all(isinstance(t, str) and t.strip() for t in split["text"])
        if splits.task.name == "multi":  # a random label such as "5F|x" holds the separator: a set of two names
            assert all(len(v) == len(names) and set(v) <= {0.0, 1.0} for v in split["label"])
        else:
            assert all(0 <= i < len(names) for i in split["label"])
    if splits.task.name == "single":
        assert len(set(splits.train["label"])) >= 2


def _load_or_data_error(path: Path) -> None:
    try:
        splits = load_splits(DataArgs(path=str(path)))
    except DataError as error:
        message = str(error)
        assert message and "\n" not in message, repr(message)
        return
    _check_loaded(splits)


@MAIN
@given(
    header=headers,
    body=rows,
    fmt=st.sampled_from(["csv", "jsonl"]),
    bom=st.booleans(),
    bad_bytes=st.booleans(),
    broken_line=st.booleans(),
)
def test_single_file_loads_or_raises_data_error(header, body, fmt, bom, bad_bytes, broken_line):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data.{fmt}"
        if fmt == "csv":
            path.write_bytes(_csv_bytes(header, body, bom, bad_bytes))
        else:
            path.write_bytes(_jsonl_bytes(header, body, bad_bytes, broken_line))
        _load_or_data_error(path)


@MAIN
@given(
    train=rows,
    test=rows,
    train_fmt=st.sampled_from(["csv", "jsonl"]),
    test_fmt=st.sampled_from(["csv", "jsonl"]),
    with_validation=st.booleans(),
)
def test_split_folder_loads_or_raises_data_error(train, test, train_fmt, test_fmt, with_validation):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {"train": (train, train_fmt), "test": (test, test_fmt)}
        if with_validation:
            files["validation"] = (test[::-1], train_fmt)
        for split, (body, fmt) in files.items():
            data = (
                _csv_bytes(["text", "label"], body, False, False)
                if fmt == "csv"
                else _jsonl_bytes(["text", "label"], body, False, False)
            )
            (folder / f"{split}.{fmt}").write_bytes(data)
        _load_or_data_error(folder)


clean_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from(['"', ",", "\n"]),
    min_size=1,
    max_size=40,
).filter(lambda t: t.strip() and any(c.isalpha() for c in t))


@MAIN
@given(
    body=st.lists(st.tuples(clean_text, st.sampled_from(["neg", "pos", "neutral"])), min_size=12, max_size=40),
    fmt=st.sampled_from(["csv", "jsonl"]),
    bom=st.booleans(),
)
def test_well_formed_file_keeps_every_row_and_label(body, fmt, bom):
    counts = {name: sum(1 for _, label in body if label == name) for name in ("neg", "pos", "neutral")}
    # every class with rows enough to keep one in train whatever the carving draws (fewer is refused by name)
    assume(sum(1 for c in counts.values() if c) >= 2 and all(c == 0 or c >= 5 for c in counts.values()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data.{fmt}"
        if fmt == "csv":
            path.write_bytes(_csv_bytes(["text", "label"], body, bom, False))
        else:
            path.write_bytes(_jsonl_bytes(["text", "label"], body, False, False))
        splits = load_splits(DataArgs(path=str(path)))
    _check_loaded(splits)
    loaded = []
    for split in (splits.train, splits.validation, splits.test):
        loaded += [(text, splits.labels[i]) for text, i in zip(split["text"], split["label"], strict=True)]
    assert sorted(loaded) == sorted(body)
    assert splits.labels == sorted(name for name, c in counts.items() if c)


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"train.csv": "text,label\na,x\nb,x\nc,x\nd,x\n"}, "single class"),
        ({"train.csv": "text,label\na,x\nb,y\nc,x\nd,y\n", "test.csv": "text,label\ne,z\n"}, "train lacks"),
        ({"train.csv": b"text,label\n\xff\xfe,x\nb,y\n"}, "UTF-8"),
        ({"train.csv": "text,text,label\na,b,x\nc,d,y\n"}, "more than one column named"),
        (
            {"train.jsonl": '{"text": "a", "label": "x"}\n{"text": "b", "label": [1]}\n'},
            r"^The train split has a label \[1\]; each label must be one value\.$",
        ),
        ({"train.csv": "text,label\n,x\n  ,y\n"}, "no row with both"),
    ],
    ids=["single-class", "test-only-label", "non-utf8", "duplicated-column", "list-label", "empty-texts"],
)
def test_known_bad_files_raise_one_line_data_error(tmp_path, files, match):
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(DataError, match=match) as info:
        load_splits(DataArgs(path=str(tmp_path)))
    assert "\n" not in str(info.value)


def test_bom_before_the_header_still_finds_the_text_column(tmp_path):
    rows = make_rows(30, seed=3)
    path = write_csv(tmp_path / "reviews.csv", rows)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    splits = load_splits(DataArgs(path=str(path)))
    assert splits.labels == ["bad", "good"]
    assert sum(len(s) for s in (splits.train, splits.validation, splits.test)) == 30


def test_texts_named_like_missing_values_are_kept(tmp_path):
    rows = [{"text": t, "label": lab} for t in ("NA", "null", "None", "nan", "N/A") for lab in ("x", "y")]
    splits = load_splits(DataArgs(path=str(write_csv(tmp_path / "train.csv", rows * 2))))
    assert sum(len(s) for s in (splits.train, splits.validation, splits.test)) == 20


def test_a_text_longer_than_the_csv_field_limit_loads(tmp_path):
    rows = make_rows(20, seed=4)
    rows[0]["text"] = "great " * 40_000  # 240k characters; Python's csv module stops at 131072 per field
    splits = load_splits(DataArgs(path=str(write_csv(tmp_path / "train.csv", rows))))
    lengths = [len(t) for s in (splits.train, splits.validation, splits.test) for t in s["text"]]
    assert max(lengths) == len(rows[0]["text"])


def test_long_texts_are_truncated_and_counted(tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    rows = make_rows(20, seed=5)
    for row in rows[:3]:
        row["text"] = " ".join(["movie"] * 300)
    splits = load_splits(DataArgs(path=str(write_csv(tmp_path / "train.csv", rows)), test_ratio=0.1))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    data = datasets.concatenate_datasets([splits.train, splits.validation, splits.test])
    encoded, truncated = tokenize(data, tokenizer, max_length=16)
    assert truncated == 3
    assert max(encoded["length"]) == 16
    assert all(len(ids) <= 16 for ids in encoded["input_ids"])
