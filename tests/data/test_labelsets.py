"""Tests for multi-label data (data.splits with data.labelsets): every form a label set can take, the task
detection and its overrides, one-line errors, the label map, stratified carving, evaluation data and data checks."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
from conftest import REPO, write_csv, write_jsonl, write_parquet
from datasets import ClassLabel, Dataset, Features, List, Value

from loratune.config import DataArgs
from loratune.data.checks import compute_data_checks
from loratune.data.labelsets import to_name_sets
from loratune.data.splits import load_eval_split, load_splits, load_texts
from loratune.errors import DataError
from loratune.task import MULTI

NAMES = ["joy", "anger", "love"]  # deliberately unsorted: the label map sorts them
GO_EMOTIONS = REPO.parent / "shared" / "data" / "go_emotions"


def label_sets(n: int, seed: int) -> list[list[str]]:
    """`n` label sets of 0 to 2 names, every name and the empty set present."""
    rng = random.Random(seed)
    sets = [["joy"], ["anger"], ["love"], ["anger", "joy"], []]
    return sets + [sorted(rng.sample(NAMES, rng.randint(0, 2))) for _ in range(n - len(sets))]


def rows(n: int, seed: int, form: str = "list", sep: str = "|") -> list[dict]:
    """Rows with unique texts; the label as a list, a `sep`-joined string, or 0/1 columns."""
    out = []
    for i, names in enumerate(label_sets(n, seed)):
        row = {"text": f"text {seed} number {i}"}
        if form == "list":
            row["labels"] = names
        elif form == "joined":
            row["labels"] = sep.join(names) if names else "neutral"  # an empty cell would be a missing label
        else:
            row.update({name: int(name in names) for name in NAMES})
        out.append(row)
    return out


def read_back(splits) -> dict[str, set[str]]:
    """{text: label set} over all three splits, decoded from the multi-hot vectors."""
    found = {}
    for split in (splits.train, splits.validation, splits.test):
        for text, vector in zip(split["text"], split["label"], strict=True):
            assert len(vector) == len(splits.labels) and set(vector) <= {0.0, 1.0}
            found[text] = {name for name, on in zip(splits.labels, vector, strict=True) if on}
    return found


def expected(written: list[dict], form: str = "list") -> dict[str, set[str]]:
    if form == "columns":
        return {r["text"]: {n for n in NAMES if r[n]} for r in written}
    return {r["text"]: set(r["labels"]) for r in written}


def write_folder(folder: Path, form: str = "list", writer=write_jsonl, suffix: str = "jsonl", **kwargs) -> dict:
    written = {}
    for seed, (split, n) in enumerate({"train": 40, "validation": 12, "test": 12}.items()):
        written[split] = rows(n, seed, form, **kwargs)
        writer(folder / f"{split}.{suffix}", written[split])
    return written


# ---------------------------------------------------------------------------------------------------------------
# The forms of a label set


def test_jsonl_arrays_load_as_sorted_multi_hot_vectors(tmp_path):
    written = write_folder(tmp_path)
    splits = load_splits(DataArgs(path=str(tmp_path)))
    assert splits.task.name == "multi"
    assert splits.labels == ["anger", "joy", "love"]
    assert splits.train.features["label"] == List(Value("float32"))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (40, 12, 12)
    assert read_back(splits) == expected([r for split in written.values() for r in split])
    assert splits.label_counts()["train"] == {n: sum(n in r["labels"] for r in written["train"]) for n in NAMES}


def test_a_parquet_list_column_is_carved_keeping_every_row_and_set(tmp_path):
    written = rows(80, seed=3)
    splits = load_splits(DataArgs(path=str(write_parquet(tmp_path / "data.parquet", written))))
    assert splits.task.name == "multi" and splits.labels == ["anger", "joy", "love"]
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 80
    assert read_back(splits) == expected(written)


def test_pipe_joined_csv_labels_are_read_as_sets(tmp_path):
    written = write_folder(tmp_path, "joined", write_csv, "csv")
    splits = load_splits(DataArgs(path=str(tmp_path)))
    assert splits.task.name == "multi"
    assert splits.labels == ["anger", "joy", "love", "neutral"]
    want = {r["text"]: set(r["labels"].split("|")) for split in written.values() for r in split}
    assert read_back(splits) == want


def test_a_custom_separator_splits_and_the_default_keeps_the_name_whole(tmp_path):
    write_folder(tmp_path, "joined", write_csv, "csv", sep=";")
    splits = load_splits(DataArgs(path=str(tmp_path), label_separator=";"))
    assert splits.task.name == "multi" and splits.labels == ["anger", "joy", "love", "neutral"]
    plain = load_splits(DataArgs(path=str(tmp_path)))
    assert plain.task.name == "single"
    assert "anger;joy" in plain.labels


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_zero_one_columns_name_the_labels_and_an_all_zero_row_is_an_empty_set(tmp_path, fmt):
    written = rows(60, seed=1, form="columns")
    if fmt == "jsonl":  # booleans, as JSON writers give them
        written = [{k: bool(v) if k in NAMES else v for k, v in r.items()} for r in written]
    writer = {"csv": write_csv, "jsonl": write_jsonl, "parquet": write_parquet}[fmt]
    path = writer(tmp_path / f"data.{fmt}", written)
    splits = load_splits(DataArgs(path=str(path), label_columns=["love", "joy", "anger"]))
    assert splits.task.name == "multi"
    assert splits.labels == ["anger", "joy", "love"]
    found = read_back(splits)
    assert found == expected(written, "columns")
    assert set() in found.values()


def test_true_false_words_and_string_digits_are_flags(tmp_path):
    values = ["1", "0", "true", "False", " 1 ", "TRUE"]
    written = [{"text": f"t{i}", "a": values[i % 6], "b": values[(i + 1) % 6]} for i in range(30)]
    splits = load_splits(DataArgs(path=str(write_jsonl(tmp_path / "d.jsonl", written)), label_columns=["a", "b"]))
    on = {"1", "true", " 1 ", "TRUE"}
    want = {r["text"]: {c for c in ("a", "b") if r[c] in on} for r in written}
    assert read_back(splits) == want


def test_hub_label_ids_in_a_list_are_read_as_their_names():
    features = Features({"text": Value("string"), "label": List(ClassLabel(names=["sad", "happy", "calm"]))})
    ds = Dataset.from_dict({"text": ["a", "b", "c"], "label": [[1, 0], [], [2]]}, features=features)
    assert to_name_sets(ds, "train", "|")["label"] == [["happy", "sad"], [], ["calm"]]


def test_task_multi_reads_a_json_column_mixing_lists_and_joined_names(tmp_path):
    written = [{"text": f"t{i}", "labels": [["joy", "love"], "anger|joy", "love"][i % 3]} for i in range(30)]
    splits = load_splits(DataArgs(path=str(write_jsonl(tmp_path / "d.jsonl", written)), task="multi"))
    sets = [{"joy", "love"}, {"anger", "joy"}, {"love"}]
    want = {r["text"]: sets[i % 3] for i, r in enumerate(written)}
    assert read_back(splits) == want


def test_the_label_map_is_sorted_whatever_the_row_order(tmp_path):
    written = rows(40, seed=5)
    write_jsonl(tmp_path / "a" / "train.jsonl", written)
    write_jsonl(tmp_path / "b" / "train.jsonl", list(reversed(written)))
    first = load_splits(DataArgs(path=str(tmp_path / "a")))
    assert first.labels == load_splits(DataArgs(path=str(tmp_path / "b"))).labels == ["anger", "joy", "love"]
    assert first.labels == load_splits(DataArgs(path=str(tmp_path / "a"))).labels


# ---------------------------------------------------------------------------------------------------------------
# Forcing the task


def test_task_multi_reads_one_name_per_row_as_one_element_sets(data_dir):
    splits = load_splits(DataArgs(path=str(data_dir), task="multi"))
    assert splits.task.name == "multi" and splits.labels == ["bad", "good"]
    assert all(sum(vector) == 1.0 for vector in splits.train["label"])


def test_task_single_keeps_a_joined_name_as_one_class(tmp_path):
    write_folder(tmp_path, "joined", write_csv, "csv")
    splits = load_splits(DataArgs(path=str(tmp_path), task="single"))
    assert splits.task.name == "single"
    assert "anger|joy" in splits.labels
    assert splits.train.features["label"].names == splits.labels


def test_task_single_refuses_list_labels_naming_the_row_size(tmp_path):
    write_folder(tmp_path)
    match = r"^The train split's labels are lists \(a row has 2 labels\); use --task multi"
    with pytest.raises(DataError, match=match):
        load_splits(DataArgs(path=str(tmp_path), task="single"))


def test_task_single_refuses_an_empty_label_set(tmp_path):
    written = [{"text": f"t{i}", "labels": [["a"], ["b"], []][i % 3]} for i in range(30)]
    write_jsonl(tmp_path / "train.jsonl", written)
    with pytest.raises(DataError, match="empty label set, and a single-label task needs one label per row"):
        load_splits(DataArgs(path=str(tmp_path), task="single"))


# ---------------------------------------------------------------------------------------------------------------
# One-line errors


def _error(tmp_path: Path, files: dict[str, list[dict]], **args) -> str:
    for name, content in files.items():
        (write_csv if name.endswith(".csv") else write_jsonl)(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        load_splits(DataArgs(path=str(tmp_path), **args))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_list_name_holding_the_separator_is_refused(tmp_path):
    train = rows(20, 0) + [{"text": "odd", "labels": ["joy", "anger|love"]}]
    message = _error(tmp_path, {"train.jsonl": train})
    assert "The train split has the label name 'anger|love', which holds the label separator '|'" in message
    assert "--label-separator" in message


def test_an_empty_name_between_separators_is_refused(tmp_path):
    test = rows(10, 1, "joined") + [{"text": "odd", "labels": "joy||love"}]
    message = _error(tmp_path, {"train.csv": rows(20, 0, "joined"), "test.csv": test})
    assert message.startswith("The test split has the label 'joy||love', with an empty name between '|' separators")


def test_an_empty_name_inside_a_list_is_refused(tmp_path):
    message = _error(tmp_path, {"train.jsonl": rows(20, 0) + [{"text": "odd", "labels": ["joy", " "]}]})
    assert message.startswith("The train split has an empty label name in")


def test_a_label_column_with_another_value_names_the_column_and_the_value(tmp_path):
    train = rows(20, 0, "columns")
    train[4]["love"] = 2
    message = _error(tmp_path, {"train.csv": train}, label_columns=NAMES)
    assert message.startswith("The train split's label column 'love' has the value '2'; label columns hold 0 or 1")


def test_a_missing_label_column_is_named(tmp_path):
    message = _error(tmp_path, {"train.csv": rows(20, 0, "columns")}, label_columns=["joy", "fear"])
    assert message.startswith("data.label_columns names ['fear'], which the train split lacks")


def test_labels_that_train_lacks_are_listed(tmp_path):
    test = rows(10, 1) + [{"text": "odd", "labels": ["joy", "fear"]}, {"text": "odder", "labels": ["awe"]}]
    message = _error(tmp_path, {"train.jsonl": rows(20, 0), "test.jsonl": test})
    assert message.startswith("The test split has label(s) ['awe', 'fear'] that train lacks")


def test_a_train_split_with_one_label_name_is_refused(tmp_path):
    train = [{"text": f"t{i}", "labels": ["joy"] if i % 2 else []} for i in range(20)]
    assert "a classifier needs at least two" in _error(tmp_path, {"train.jsonl": train})


def test_an_empty_cell_is_the_empty_label_set_and_the_row_is_kept(tmp_path, caplog):
    # it used to be dropped as a missing label; "none of these labels applies" is an answer a model must learn
    train = rows(20, 0, "joined") + [{"text": "no label here", "labels": ""}]
    write_csv(tmp_path / "train.csv", train)
    with caplog.at_level(logging.WARNING, logger="loratune.data.splits"):
        splits = load_splits(DataArgs(path=str(tmp_path)))
    assert splits.task.name == "multi" and splits.dropped["train"] == 0
    assert read_back(splits)["no label here"] == set()
    assert "Dropped" not in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Carving, evaluation data, data checks


@pytest.mark.parametrize("seed", range(5))
def test_a_carved_split_keeps_a_rare_label_on_every_side(tmp_path, seed):
    # 10 of 100 rows carry "rare", always beside a common label: stratifying by the row's rarest label puts one in
    # test and one in validation; a random 10-row test split misses all ten about a third of the time.
    written = [
        {"text": f"t{i}", "labels": ["common", "rare"] if i % 10 == 0 else [["common"], ["other"]][i % 2]}
        for i in range(100)
    ]
    splits = load_splits(DataArgs(path=str(write_jsonl(tmp_path / "d.jsonl", written))), seed=seed)
    counts = splits.label_counts()
    assert (counts["train"]["rare"], counts["validation"]["rare"], counts["test"]["rare"]) == (8, 1, 1)


def test_load_eval_split_encodes_with_the_runs_labels_and_order(tmp_path):
    write_folder(tmp_path, "joined", write_csv, "csv")
    run_labels = ["love", "neutral", "joy", "anger", "fear"]  # the run's order, and a label this data lacks
    ds = load_eval_split(DataArgs(path=str(tmp_path)), "test", run_labels, task=MULTI)
    assert ds.features["label"] == List(Value("float32"))
    written = {r["text"]: set(r["labels"].split("|")) for r in rows(12, 2, "joined")}
    for text, vector in zip(ds["text"], ds["label"], strict=True):
        assert {n for n, on in zip(run_labels, vector, strict=True) if on} == written[text]


def test_load_eval_split_refuses_labels_the_run_never_saw(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(DataError, match=r"^The test split has label\(s\) \['love'\] that the run was not trained on"):
        load_eval_split(DataArgs(path=str(tmp_path)), "test", ["anger", "joy"], task=MULTI)


def test_load_eval_split_for_a_single_label_run_refuses_label_sets(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(DataError, match="use --task multi"):
        load_eval_split(DataArgs(path=str(tmp_path)), "test", ["anger", "joy", "love"])


def test_load_texts_gives_sorted_lists_of_names(tmp_path):
    write_folder(tmp_path, "joined", write_csv, "csv")
    raw, dropped, task = load_texts(DataArgs(path=str(tmp_path)))
    assert task.name == "multi" and raw["train"].features["label"] == List(Value("string"))
    assert raw["train"]["label"][3] == ["anger", "joy"]
    assert dropped == {"train": 0, "validation": 0, "test": 0}


def test_data_checks_compare_label_sets_and_count_label_occurrences(tmp_path):
    train = [
        {"text": "same set twice", "labels": ["joy", "love"]},
        {"text": "same set twice", "labels": ["love", "joy"]},
        {"text": "sets differ", "labels": ["joy", "love"]},
        {"text": "sets differ", "labels": ["joy"]},
        {"text": "none then some", "labels": []},
        {"text": "none then some", "labels": ["anger"]},
        *[{"text": f"a joyful text {i}", "labels": ["joy"]} for i in range(6)],
        {"text": "shared with test", "labels": ["anger", "joy"]},
    ]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "test.jsonl", [{"text": "shared with test", "labels": ["joy"]}, *rows(10, 1)])
    write_jsonl(tmp_path / "validation.jsonl", rows(10, 2))
    splits = load_splits(DataArgs(path=str(tmp_path)))
    named = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    encoded = compute_data_checks(named, splits.task, splits.dropped, splits.labels)
    raw, dropped, task = load_texts(DataArgs(path=str(tmp_path)))
    as_read = compute_data_checks({name: raw[name] for name in ("train", "validation", "test")}, task, dropped)
    for checks in (encoded, as_read):
        assert checks["task"] == "multi"
        assert checks["splits"]["train"]["conflicting_texts"] == 2
        examples = {e["text"]: e["labels"] for e in checks["conflict_examples"]}
        assert examples == {"sets differ": ["joy", "joy|love"], "none then some": ["(none)", "anger"]}
        assert checks["label_counts"] == {"anger": 2, "joy": 11, "love": 3}
        assert checks["imbalance_ratio"] == 5.5
        assert checks["shared"]["train/test"]["texts"] == 1
        assert "2 train texts carry differing label sets" in checks["warnings"]


def test_go_emotions_loads_as_28_labels_with_its_split_sizes():
    if not GO_EMOTIONS.is_dir():
        pytest.skip(f"real dataset folder {GO_EMOTIONS} is missing (expected ../shared/data/go_emotions)")
    splits = load_splits(DataArgs(path=str(GO_EMOTIONS)))
    assert splits.task.name == "multi"
    assert len(splits.labels) == 28 and splits.labels == sorted(splits.labels)
    assert {"admiration", "neutral", "grief"} <= set(splits.labels)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (43410, 5426, 5427)
    assert len(splits.train[0]["label"]) == 28
