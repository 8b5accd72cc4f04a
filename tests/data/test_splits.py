"""Tests for loratune.data.splits: loading every supported layout, column detection, label maps, splits, bad data."""

from __future__ import annotations

import pytest
from conftest import make_rows, write_csv, write_jsonl

from loratune import DataError
from loratune.config import DataArgs
from loratune.data.batches import tokenize
from loratune.data.splits import load_eval_split, load_splits


def test_folder_gives_its_three_splits(data_dir):
    splits = load_splits(DataArgs(path=str(data_dir)))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (40, 16, 16)
    assert splits.labels == ["bad", "good"]
    assert splits.eval_name == "test"
    assert not splits.is_pair
    assert set(splits.train.column_names) == {"text", "label"}
    assert set(splits.train["label"]) == {0, 1}


@pytest.mark.parametrize("fixture", ["data_csv", "data_jsonl", "data_parquet"])
def test_single_file_is_split_into_train_validation_and_test(fixture, request):
    splits = load_splits(DataArgs(path=str(request.getfixturevalue(fixture))))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (49, 5, 6)
    assert splits.labels == ["bad", "good"]
    assert splits.eval_name == "test"
    texts = [*splits.train["text"], *splits.validation["text"], *splits.test["text"]]
    assert sorted(texts) == sorted(r["text"] for r in make_rows(60, seed=7))


def test_csv_jsonl_and_parquet_give_the_same_splits(data_csv, data_jsonl, data_parquet):
    loaded = [load_splits(DataArgs(path=str(p))) for p in (data_csv, data_jsonl, data_parquet)]
    for splits in loaded[1:]:
        assert splits.labels == loaded[0].labels
        assert splits.test["text"] == loaded[0].test["text"]


def test_carved_splits_are_stratified(data_csv):
    splits = load_splits(DataArgs(path=str(data_csv), test_ratio=0.2, validation_ratio=0.2))
    counts = splits.label_counts()
    assert counts["test"] == {"bad": 6, "good": 6}
    assert abs(counts["validation"]["bad"] - counts["validation"]["good"]) <= 1


def test_carved_splits_depend_only_on_the_seed(data_csv):
    args = DataArgs(path=str(data_csv))
    first, again, other = load_splits(args, seed=1), load_splits(args, seed=1), load_splits(args, seed=2)
    assert first.test["text"] == again.test["text"]
    assert first.validation["text"] == again.validation["text"]
    assert first.test["text"] != other.test["text"]


def test_max_train_samples_is_a_deterministic_subsample(data_dir):
    args = DataArgs(path=str(data_dir), max_train_samples=10, max_eval_samples=4)
    first, again = load_splits(args, seed=3), load_splits(args, seed=3)
    assert len(first.train) == 10
    assert (len(first.validation), len(first.test)) == (4, 4)
    assert first.train["text"] == again.train["text"]
    assert set(first.train["text"]) <= set(load_splits(DataArgs(path=str(data_dir))).train["text"])


def test_label_order_is_stable_whatever_the_row_order(tmp_path):
    rows = make_rows(20, seed=1)
    write_csv(tmp_path / "a" / "train.csv", rows)
    write_csv(tmp_path / "b" / "train.csv", list(reversed(rows)))
    assert load_splits(DataArgs(path=str(tmp_path / "a"))).labels == ["bad", "good"]
    assert load_splits(DataArgs(path=str(tmp_path / "b"))).labels == ["bad", "good"]


def test_integer_labels_are_sorted_numerically(tmp_path):
    rows = [{"text": f"text number {i}", "label": [10, 2, 7][i % 3]} for i in range(30)]
    splits = load_splits(DataArgs(path=str(write_jsonl(tmp_path / "ints.jsonl", rows))))
    assert splits.labels == ["2", "7", "10"]
    first = splits.train[0]
    assert splits.labels[first["label"]] == str([10, 2, 7][int(first["text"].split()[-1]) % 3])


def test_string_labels_map_to_ids_in_label_order(data_dir):
    splits = load_splits(DataArgs(path=str(data_dir)))
    for row in splits.train.select(range(10)):
        keyword = "great" if splits.labels[row["label"]] == "good" else "awful"
        assert keyword in row["text"]


@pytest.mark.parametrize(
    ("columns", "expected_text"),
    [(("sentence", "label"), "sentence"), (("review", "sentiment"), "review"), (("Text", "Category"), "Text")],
)
def test_text_and_label_columns_are_detected(tmp_path, columns, expected_text):
    rows = [{columns[0]: r["text"], columns[1]: r["label"]} for r in make_rows(30, seed=2)]
    splits = load_splits(DataArgs(path=str(write_csv(tmp_path / "d.csv", rows))))
    assert splits.labels == ["bad", "good"]
    assert sorted(splits.train.column_names) == ["label", "text"]


def test_text_pair_columns_are_detected(tmp_path):
    rows = [
        {"sentence1": r["text"], "sentence2": "the movie", "label": "same" if i % 2 else "different"}
        for i, r in enumerate(make_rows(30, seed=3))
    ]
    splits = load_splits(DataArgs(path=str(write_csv(tmp_path / "pairs.csv", rows))))
    assert splits.is_pair
    assert set(splits.train.column_names) == {"text", "text_pair", "label"}
    assert splits.labels == ["different", "same"]


def test_explicit_columns_are_used(tmp_path):
    rows = [{"body": r["text"], "title": "x", "verdict": r["label"]} for r in make_rows(30, seed=4)]
    args = DataArgs(path=str(write_csv(tmp_path / "d.csv", rows)), text_column="body", label_column="verdict")
    splits = load_splits(args)
    assert splits.labels == ["bad", "good"]
    assert all(("great" in t) or ("awful" in t) for t in splits.train["text"])


def test_tokenize_counts_truncated_texts(data_dir, tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    train = load_splits(DataArgs(path=str(data_dir))).train
    lengths = [len(tokenizer(t)["input_ids"]) for t in train["text"]]
    encoded, truncated = tokenize(train, tokenizer, max_length=8)
    assert truncated == sum(n > 8 for n in lengths) > 0
    assert max(encoded["length"]) == 8
    assert encoded["length"] == [min(n, 8) for n in lengths]
    assert {"input_ids", "attention_mask", "label", "length"} <= set(encoded.column_names)
    _, none_truncated = tokenize(train, tokenizer, max_length=128)
    assert none_truncated == 0


def test_eval_split_is_encoded_with_the_runs_labels(data_dir):
    ds = load_eval_split(DataArgs(path=str(data_dir)), "validation", ["bad", "good"])
    assert len(ds) == 16
    assert set(ds["label"]) == {0, 1}


# Bad data -------------------------------------------------------------------------------------------------------


def test_missing_path_is_reported(tmp_path):
    with pytest.raises(DataError, match=r"does not exist; check the path"):
        load_splits(DataArgs(path=str(tmp_path / "nope.csv")))


def test_no_path_is_reported():
    with pytest.raises(DataError, match=r"No dataset given"):
        load_splits(DataArgs())


def test_empty_file_is_reported(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty.csv is empty"):
        load_splits(DataArgs(path=str(tmp_path / "empty.csv")))


def test_header_only_file_is_reported(tmp_path):
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match=r"has a header but no rows"):
        load_splits(DataArgs(path=str(tmp_path / "header.csv")))


def test_folder_without_train_file_is_reported(tmp_path):
    write_csv(tmp_path / "validation.csv", make_rows(10, seed=1))
    write_csv(tmp_path / "test.csv", make_rows(10, seed=2))
    with pytest.raises(DataError, match=r"has no train file"):
        load_splits(DataArgs(path=str(tmp_path)))


def test_missing_text_column_is_reported(tmp_path):
    rows = [{"body": r["text"], "label": r["label"]} for r in make_rows(20, seed=1)]
    with pytest.raises(DataError, match=r"No text column found among \['body', 'label'\]"):
        load_splits(DataArgs(path=str(write_csv(tmp_path / "d.csv", rows))))


def test_explicit_column_that_is_absent_is_reported(tmp_path):
    path = write_csv(tmp_path / "d.csv", make_rows(20, seed=1))
    with pytest.raises(DataError, match=r"data.text_column='sentence' is not in the train split; its columns are"):
        load_splits(DataArgs(path=str(path), text_column="sentence"))


def test_split_lacking_a_column_is_reported(tmp_path):
    write_csv(tmp_path / "train.csv", make_rows(20, seed=1))
    rows = [{"text": r["text"], "tag": r["label"]} for r in make_rows(10, seed=2)]
    write_csv(tmp_path / "test.csv", rows)
    with pytest.raises(DataError, match=r"The test split lacks column\(s\) \['label'\]"):
        load_splits(DataArgs(path=str(tmp_path)))


def test_ambiguous_label_columns_are_reported(tmp_path):
    rows = [{"text": r["text"], "label": r["label"], "category": "x"} for r in make_rows(20, seed=1)]
    with pytest.raises(DataError, match=r"Several possible label columns \['label', 'category'\]"):
        load_splits(DataArgs(path=str(write_csv(tmp_path / "d.csv", rows))))


def test_single_class_train_is_reported(tmp_path):
    rows = [{"text": r["text"], "label": "good"} for r in make_rows(20, seed=1)]
    with pytest.raises(DataError, match=r"single class \('good'\)"):
        load_splits(DataArgs(path=str(write_csv(tmp_path / "d.csv", rows))))


def test_label_in_test_that_train_lacks_is_reported(tmp_path):
    write_csv(tmp_path / "train.csv", make_rows(20, seed=1))
    test = make_rows(10, seed=2)
    test[3]["label"] = "neutral"
    write_csv(tmp_path / "test.csv", test)
    with pytest.raises(DataError, match=r"The test split has label\(s\) \['neutral'\] that train lacks"):
        load_splits(DataArgs(path=str(tmp_path)))


def test_eval_split_with_an_unknown_label_is_reported(data_dir):
    with pytest.raises(DataError, match=r"the run's labels: \['neg', 'pos'\]"):
        load_eval_split(DataArgs(path=str(data_dir)), "test", ["neg", "pos"])
