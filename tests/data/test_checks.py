"""Data checks before training (loratune.data.checks): a planted dataset whose checks find exactly what was planted."""

from __future__ import annotations

import json

import pytest
from conftest import write_csv

from loratune.cli import main
from loratune.config import DataArgs
from loratune.data.checks import add_truncation, check_strict, compute_data_checks
from loratune.data.splits import load_splits
from loratune.errors import DataError


def rows(prefix: str, n: int) -> list[dict[str, str]]:
    return [{"text": f"{prefix} sentence number {i} is here", "label": ["neg", "pos"][i % 2]} for i in range(n)]


def as_dict(splits) -> dict:
    return {"train": splits.train, "validation": splits.validation, "test": splits.test}


@pytest.fixture
def planted(tmp_path):
    """Unique texts, plus: 2 train texts repeated in test (one exactly, one in other case and spacing), 1 in
    validation; one train text with two labels; one repeated train row with its own label; one very short text."""
    train = rows("train", 40) + [
        {"text": "Shared With Test", "label": "pos"},
        {"text": "also shared", "label": "neg"},
        {"text": "shared with validation", "label": "pos"},
        {"text": "a conflicted text", "label": "pos"},
        {"text": "a conflicted text", "label": "neg"},
        {"text": "train sentence number 0 is here", "label": "neg"},  # an exact duplicate, same label
        {"text": "ok", "label": "pos"},
        {"text": "   ", "label": "pos"},  # empty after strip: dropped on loading
    ]
    validation = rows("validation", 10) + [{"text": "shared with validation", "label": "pos"}]
    test = rows("test", 10) + [{"text": "Shared With Test", "label": "pos"}, {"text": "ALSO   shared", "label": "neg"}]
    # in a folder of its own: a run folder may not be written inside the data (runs.destination)
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        write_csv(tmp_path / "data" / f"{name}.csv", split)
    return tmp_path / "data"


def test_planted_duplicates_and_conflicts_are_found_exactly(planted):
    splits = load_splits(DataArgs(path=str(planted)))
    checks = compute_data_checks(as_dict(splits), splits.task, splits.dropped, splits.labels)

    assert checks["shared"]["train/test"]["texts"] == 1
    assert checks["shared"]["train/test"]["texts_normalised"] == 2
    assert checks["shared"]["train/test"]["examples"] == ["Shared With Test"]
    assert checks["shared"]["train/validation"]["texts"] == 1
    assert checks["shared"]["validation/test"]["texts"] == 0
    train = checks["splits"]["train"]
    assert train["conflicting_texts"] == 1
    assert checks["conflict_examples"] == [{"split": "train", "text": "a conflicted text", "labels": ["neg", "pos"]}]
    assert train["duplicate_texts"] == 2  # the conflicted text's second row and the repeated row
    assert train["short_texts"] == 2  # "ok" and "also shared": at most two words
    assert train["dropped_rows"] == 1
    assert checks["splits"]["test"]["conflicting_texts"] == 0
    assert checks["label_counts"] == {"neg": 23, "pos": 24}
    assert checks["imbalance_ratio"] == pytest.approx(24 / 23)
    assert checks["warnings"] == [  # one of each, in the singular
        "1 text appears in both train and validation",
        "1 text appears in both train and test (2 once case and spaces are normalised)",
        "1 train text carries more than one label",
        "1 train row was dropped (empty text or missing label)",
    ]


def test_truncation_past_one_percent_warns_and_strict_mode_refuses(planted):
    splits = load_splits(DataArgs(path=str(planted)))
    checks = add_truncation(
        compute_data_checks(as_dict(splits), splits.task, label_names=splits.labels),
        {"train": 10, "validation": 0, "test": 0},
        16,
    )
    assert checks["splits"]["train"]["truncated"] == 10
    assert any("longer than 16 tokens" in w for w in checks["warnings"])
    with pytest.raises(DataError, match="strict-data.*appears? in both"):
        check_strict(checks, "data_checks.json")


def test_a_run_writes_its_checks_and_strict_data_stops_it_before_training(planted, tiny_bert, tmp_path, capsys):
    argv = ["train", "--data", str(planted), "--model", str(tiny_bert), "--epochs", "1", "--no-progress"]
    runs = tmp_path.parent / f"{tmp_path.name}-runs"  # beside the data folder: runs are never written inside it
    assert main([*argv, "--output-dir", str(runs / "strict"), "--strict-data"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--strict-data" in err
    assert not (runs / "strict").exists()  # stopped before the run folder or the model

    assert main([*argv, "--output-dir", str(runs / "warned")]) == 0
    assert "data checks:" in capsys.readouterr().err
    saved = json.loads((runs / "warned" / "data_checks.json").read_text())
    assert saved["splits"]["train"]["conflicting_texts"] == 1
    assert set(saved["splits"]["train"]) >= {"truncated", "rows"}


def test_a_warning_is_worded_for_its_counts():
    from loratune.data.checks import _counted

    verbs, loosely = ("appears", "appear"), "once case and spaces are normalised"
    assert _counted(0, 1, verbs, "in both train and test", loosely) == (
        "1 text appears in both train and test once case and spaces are normalised"
    )  # never "0 texts appear ... (1 after normalising)"
    assert _counted(3, 3, verbs, "in both a and b", loosely) == "3 texts appear in both a and b"
    assert _counted(2, 5, ("carries", "carry"), "two labels", loosely, "train") == (
        "2 train texts carry two labels (5 once case and spaces are normalised)"
    )
