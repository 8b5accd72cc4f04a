"""Labels checked like data (data.labelchecks): a label that only looks like one is no class, spellings that
differ only in case or spaces are refused or merged, a class the train split lacks is refused, and a multi-label
text with an empty label set is kept, trained on and scored."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from conftest import make_rows, tiny_config, write_csv, write_jsonl

from loratune.cli import main
from loratune.config import DataArgs
from loratune.data.labelchecks import looks_missing
from loratune.data.splits import load_eval_split, load_splits, load_texts
from loratune.errors import DataError
from loratune.task import MULTI


def _all_rows(splits) -> list[tuple[str, str]]:
    """(text, label name) over the three splits."""
    return [
        (text, splits.labels[i])
        for split in (splits.train, splits.validation, splits.test)
        for text, i in zip(split["text"], split["label"], strict=True)
    ]


def _with_labels(labels: list, seed: int = 0) -> list[dict]:
    """Rows of make_rows whose first len(labels) labels are replaced."""
    rows = make_rows(40, seed)
    for row, label in zip(rows, labels, strict=False):
        row["label"] = label
    return rows


# -- labels that only look like labels ------------------------------------------------------------------------------

MISSING = ["NaN", "nan", "None", "null", "NULL", "N/A", "n/a", "NA", "", "   ", "good\x00", "\x1b[31mbad"]


def test_a_literal_nan_in_a_csv_label_column_is_no_class(tmp_path, caplog):
    path = write_csv(tmp_path / "train.csv", _with_labels(["NaN", "NaN", "NaN"]))
    with caplog.at_level(logging.WARNING, logger="loratune.data.splits"):
        splits = load_splits(DataArgs(path=str(path)))
    assert splits.labels == ["bad", "good"]
    assert splits.dropped["train"] == 3 and len(_all_rows(splits)) == 37
    assert "Dropped 3 of 40 train rows with an empty text or a missing label" in caplog.text


@pytest.mark.parametrize("label", MISSING)
def test_a_missing_looking_csv_label_is_dropped_and_counted(tmp_path, label):
    path = write_csv(tmp_path / "train.csv", _with_labels([label, label]))
    raw, dropped, task = load_texts(DataArgs(path=str(path)))
    assert task.name == "single" and dropped == {"train": 2}
    assert set(raw["train"]["label"]) == {"good", "bad"}


@pytest.mark.parametrize("label", [math.nan, None, "None", " null ", "N/A", "", "bad\x1b"])
def test_a_missing_looking_jsonl_label_is_dropped(tmp_path, label):
    rows = _with_labels([label])
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in rows))
    raw, dropped, _ = load_texts(DataArgs(path=str(path)))
    assert dropped == {"train": 1} and set(raw["train"]["label"]) == {"good", "bad"}


def test_integer_class_ids_around_a_nan_stay_numbers_in_numeric_order(tmp_path):
    rows = [{"text": f"text number {i}", "label": str(i % 12)} for i in range(60)]
    rows[5]["label"], rows[7]["label"] = "NaN", "N/A"
    splits = load_splits(DataArgs(path=str(write_csv(tmp_path / "train.csv", rows))))
    assert splits.labels == [str(i) for i in range(12)]  # 2 before 10, and no class "NaN"
    assert splits.dropped["train"] == 2


def test_integer_class_ids_are_never_missing(tmp_path):
    rows = [{"text": f"text number {i}", "label": str(i % 2)} for i in range(30)]
    splits = load_splits(DataArgs(path=str(write_csv(tmp_path / "train.csv", rows))))
    assert splits.labels == ["0", "1"] and splits.dropped["train"] == 0
    assert not looks_missing(0) and not looks_missing(0.0) and not looks_missing("0")


def test_a_text_named_like_a_missing_value_is_still_a_text(tmp_path):
    rows = _with_labels([])
    rows[0]["text"], rows[1]["text"] = "NaN", "null"
    raw, dropped, _ = load_texts(DataArgs(path=str(write_csv(tmp_path / "train.csv", rows))))
    assert dropped == {"train": 0} and {"NaN", "null"} <= set(raw["train"]["text"])


# -- spellings that differ only in case or surrounding spaces ---------------------------------------------------


def test_labels_differing_only_in_case_are_refused_naming_both_and_their_counts(tmp_path):
    rows = _with_labels(["Good", "Good", "Good"])
    path = write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(DataError) as info:
        load_splits(DataArgs(path=str(path)))
    message = str(info.value)
    good = sum(r["label"] == "good" for r in rows)
    assert f"'Good' (3 rows) vs 'good' ({good} rows)" in message, message
    assert "--merge-label-case" in message and "fix the data" in message and "\n" not in message


def test_labels_differing_only_in_surrounding_spaces_are_refused(tmp_path):
    path = write_csv(tmp_path / "train.csv", _with_labels(["good "]))
    with pytest.raises(DataError, match=r"'good' \(19 rows\) vs 'good ' \(1 row\)"):
        load_splits(DataArgs(path=str(path)))


def test_a_spelling_found_only_in_test_is_named_as_a_spelling(tmp_path):
    write_csv(tmp_path / "train.csv", make_rows(20, seed=1))
    write_csv(tmp_path / "test.csv", [{"text": "great film", "label": "GOOD"}, *make_rows(6, seed=2)])
    with pytest.raises(DataError, match=r"'GOOD' \(1 row\) vs 'good'"):
        load_splits(DataArgs(path=str(tmp_path)))


def test_merge_label_case_merges_into_the_most_frequent_spelling_with_a_warning(tmp_path, caplog):
    rows = _with_labels(["Good", "Good", "good ", "BAD"])
    path = write_csv(tmp_path / "train.csv", rows)
    with caplog.at_level(logging.WARNING, logger="loratune.data.labelchecks"):
        splits = load_splits(DataArgs(path=str(path), merge_label_case=True))
    assert splits.labels == ["bad", "good"] and len(_all_rows(splits)) == 40
    assert sum(name == "good" for _, name in _all_rows(splits)) == sum(
        r["label"].strip().lower() == "good" for r in rows
    )
    bad, good = (sum(r["label"] == name for r in rows) for name in ("bad", "good"))
    warning = [r.getMessage() for r in caplog.records if "Merged" in r.getMessage()]
    assert warning == [
        f"Merged labels that differ only in case or surrounding spaces: 'BAD' (1 row) into 'bad' ({bad} rows); "
        f"'Good' (2 rows), 'good ' (1 row) into 'good' ({good} rows)."
    ]


def test_merge_label_case_breaks_a_tie_by_the_first_spelling_in_sorted_order(tmp_path):
    rows = [{"text": f"text number {i}", "label": ["Pos", "pos", "neg"][i % 3]} for i in range(30)]
    splits = load_splits(DataArgs(path=str(write_csv(tmp_path / "d.csv", rows)), merge_label_case=True))
    assert splits.labels == ["Pos", "neg"]


def test_multi_label_names_differing_only_in_case_are_refused_or_merged(tmp_path):
    rows = [{"text": f"text number {i}", "labels": ["joy|love", "Joy", "love", ""][i % 4]} for i in range(40)]
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=r"'Joy' \(10 rows\) vs 'joy' \(10 rows\)"):
        load_splits(DataArgs(path=str(path)))
    splits = load_splits(DataArgs(path=str(path), merge_label_case=True))
    assert splits.task is MULTI and splits.labels == ["Joy", "love"]


def test_the_merge_label_case_flag_comes_from_the_config_field(capsys):
    assert main(["validate", "--merge-label-case"]) == 0
    assert "merge_label_case: true" in capsys.readouterr().out


def test_check_data_refuses_case_variants_in_one_line(tmp_path, capsys):
    path = write_csv(tmp_path / "d.csv", _with_labels(["Good"]))
    assert main(["check-data", "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'Good' (1 row) vs 'good' (19 rows)" in err


# -- every class in the train split ---------------------------------------------------------------------------------


def test_a_class_whose_only_row_is_carved_out_of_train_is_refused(tmp_path):
    rows = _with_labels(["rare"])
    path = write_csv(tmp_path / "d.csv", rows)
    refused = 0
    for seed in range(30):
        try:
            splits = load_splits(DataArgs(path=str(path)), seed=seed)
        except DataError as error:
            refused += 1
            assert str(error).startswith(
                "The train split has no row of 1 class once test and validation were carved out of it (too few rows "
                "to split stratified): 'rare' (1 row) in the other splits; add rows of it to the data, or remove it."
            ), error
        else:  # the row stayed in train
            assert splits.label_counts()["train"]["rare"] == 1
    assert refused  # it used to train a 3-class model that never saw 'rare'


def test_a_train_file_lacking_a_class_of_validation_is_refused(tmp_path):
    write_csv(tmp_path / "train.csv", make_rows(20, seed=1))
    write_csv(tmp_path / "validation.csv", _with_labels(["neutral", "neutral"], seed=2)[:10])
    with pytest.raises(DataError, match=r"label\(s\) \['neutral'\] that train lacks.*remove them from the data"):
        load_splits(DataArgs(path=str(tmp_path)))


def test_max_train_samples_that_leaves_a_class_out_is_refused(tmp_path):
    rows = [{"text": f"text number {i}", "label": "good"} for i in range(30)]
    rows += [{"text": f"other text {i}", "label": "bad"} for i in range(3)] + [
        {"text": f"third text {i}", "label": "ugly"} for i in range(3)
    ]
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", rows[:2] + rows[-4:])
    write_csv(tmp_path / "validation.csv", rows[:2] + rows[-4:])
    with pytest.raises(DataError, match=r"in the 2 rows --max-train-samples keeps \(raise it\)"):
        load_splits(DataArgs(path=str(tmp_path), max_train_samples=2))


def test_a_multi_label_label_carved_out_of_train_is_refused(tmp_path):
    rows = [{"text": f"text number {i}", "labels": ["joy", "love", "joy|love"][i % 3]} for i in range(40)]
    rows[0]["labels"] = "anger"
    path = write_csv(tmp_path / "d.csv", rows)
    outcomes = set()
    for seed in range(30):
        try:
            outcomes.add(load_splits(DataArgs(path=str(path)), seed=seed).label_counts()["train"]["anger"])
        except DataError as error:
            assert "The train split has no row of 1 label" in str(error) and "'anger' (1 row)" in str(error)
            outcomes.add("refused")
    assert outcomes <= {1, "refused"} and "refused" in outcomes


# -- multi-label: the empty label set ---------------------------------------------------------------------------


def _tagged(n: int, seed: int) -> list[dict]:
    """Multi-label rows: 'music' means action, 'story' romance; a text with neither has the empty set."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        tags = [t for t, on in zip(("action", "romance"), rng.random(2) < 0.4, strict=True) if on]
        words = ["the", "film", "was"] + [{"action": "music", "romance": "story"}[t] for t in tags] + ["a"] * (i % 3)
        rows.append({"text": " ".join(words) + f" {i}", "labels": "|".join(tags)})
    return rows


def test_empty_label_cells_are_the_empty_set_in_every_split(tmp_path):
    for split, n, seed in (("train", 40, 0), ("validation", 16, 1), ("test", 16, 2)):
        write_csv(tmp_path / f"{split}.csv", _tagged(n, seed))
    splits = load_splits(DataArgs(path=str(tmp_path)))
    assert splits.task is MULTI and splits.labels == ["action", "romance"]
    assert splits.dropped == {"train": 0, "validation": 0, "test": 0}
    for split in (splits.train, splits.validation, splits.test):
        assert any(sum(row) == 0 for row in split["label"])


def test_a_null_or_nan_multi_label_cell_is_the_empty_set_and_a_control_character_drops_the_row(tmp_path):
    rows = [{"text": f"text {i}", "labels": ["joy", "love"][i % 2]} for i in range(20)]
    rows += [{"text": "null one", "labels": None}, {"text": "empty list", "labels": []}]
    rows += [{"text": "corrupt", "labels": "joy\x00"}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    raw, dropped, task = load_texts(DataArgs(path=str(tmp_path), task="multi"))
    found = dict(zip(raw["train"]["text"], raw["train"]["label"], strict=True))
    assert task is MULTI and dropped == {"train": 1}
    assert found["null one"] == [] and found["empty list"] == [] and "corrupt" not in found


def test_an_empty_zero_one_cell_is_unknown_and_drops_the_row(tmp_path):
    rows = [{"text": f"text {i}", "joy": i % 2, "love": (i // 2) % 2} for i in range(20)]
    rows[0]["joy"], rows[1]["love"] = "", "NaN"
    write_csv(tmp_path / "train.csv", rows)
    raw, dropped, _ = load_texts(DataArgs(path=str(tmp_path), label_columns=["joy", "love"]))
    assert dropped == {"train": 2} and [] in raw["train"]["label"]


def test_an_eval_file_with_empty_label_sets_is_scored_with_them(tmp_path):
    write_csv(tmp_path / "test.csv", _tagged(12, 3))
    ds = load_eval_split(DataArgs(path=str(tmp_path)), "test", ["action", "romance"], task=MULTI)
    assert len(ds) == 12 and any(sum(row) == 0 for row in ds["label"])


def test_a_run_trains_on_and_scores_texts_with_the_empty_label_set(tmp_path, tiny_bert):
    import loratune
    from loratune.runs import files

    data = tmp_path / "data"
    for split, n, seed in (("train", 48, 0), ("validation", 16, 1), ("test", 16, 2)):
        write_csv(data / f"{split}.csv", _tagged(n, seed))
    run = loratune.run(tiny_config(tiny_bert, data, tmp_path / "run", train__num_epochs=1, data__max_length=16))
    summary = run.summary
    assert summary.task == "multi" and summary.data.train_size == 48 and summary.data.test_size == 16
    assert all(math.isfinite(v) for v in (summary.after.f1, summary.after.accuracy, summary.after.loss))
    table = files.load_predictions(run.run_dir)
    assert (table["label"] == "").any()  # texts with no label are in the scored split
