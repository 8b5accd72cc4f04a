"""A run of many classes finishes in bounded time, with a run folder of bounded size and a report that stays
readable: the tables and charts show the most frequent classes and say so, metrics.json keeps every class."""

from __future__ import annotations

import random
import time

import pandas as pd
import pytest
from conftest import WORDS, tiny_config, write_csv

from loratune.report.label_tables import SHOWN_LABELS
from loratune.runs import files
from loratune.schema import DETAILED_LABELS
from loratune.training.recipe import run


def many_class_data(folder, classes: int):
    rng = random.Random(classes)
    for split, per_class in (("train", 2), ("validation", 1), ("test", 1)):
        rows = [
            {"text": " ".join(rng.choices(WORDS, k=4)), "label": f"topic {k:04d}"}
            for k in range(classes)
            for _ in range(per_class)
        ]
        rng.shuffle(rows)
        write_csv(folder / f"{split}.csv", rows)
    return folder


@pytest.mark.parametrize("classes", [40, DETAILED_LABELS + 20])
def test_a_run_of_many_classes_finishes_with_a_readable_report(tmp_path, tiny_bert, classes):
    data = many_class_data(tmp_path / "data", classes)
    started = time.perf_counter()
    result = run(tiny_config(tiny_bert, data, tmp_path / "run", train__num_epochs=1, train__warmup_ratio=0.0))
    assert time.perf_counter() - started < 120  # a bound against hangs (5,000 classes once plotted for > 10 min)
    folder = result.run_dir
    assert (folder / files.COMPLETE).exists()

    summary = files.load_summary(folder)
    assert len(summary.after.per_class) == classes  # every class scored
    matrix = summary.after.confusion_matrix
    assert (len(matrix) == classes) if classes <= DETAILED_LABELS else matrix == []
    table = pd.read_parquet(folder / files.PREDICTIONS_FILE)
    assert ("probs_after" in table.columns) == (classes <= DETAILED_LABELS)
    assert (folder / "per_class_f1.png").exists()
    assert (folder / "confusion_matrix.png").exists() == (classes <= DETAILED_LABELS)

    report = (folder / "report.md").read_text()
    per_class = report[report.index("## Per class") :].split("\n## ")[0]
    rows = [line for line in per_class.splitlines() if line.startswith("| topic")]
    assert len(rows) == SHOWN_LABELS
    assert f"Only the {SHOWN_LABELS} classes with the most test examples, of {classes}" in per_class
    assert f"the {SHOWN_LABELS} most frequent of {classes} labels" in report  # the charts' captions say so too


def test_a_method_that_gave_every_text_one_class_is_named_without_a_confusion_matrix():
    from types import SimpleNamespace

    from loratune.report.comparison import _single_class
    from loratune.schema import ClassScores

    def summary(per_class):
        after = SimpleNamespace(confusion_matrix=[], per_class=per_class, num_samples=10)
        return SimpleNamespace(trained=True, after=after)

    one = {"a": ClassScores(0.3, 1.0, 0.46, 3), "b": ClassScores(0.0, 0.0, 0.0, 7), "c": ClassScores(0, 0, 0, 0)}
    assert _single_class(summary(one), ["a", "b", "c"]) == "a"
    mixed = {"a": ClassScores(0.5, 1.0, 0.67, 3), "b": ClassScores(0.0, 0.0, 0.0, 7), "c": ClassScores(0, 0, 0, 0)}
    assert _single_class(summary(mixed), ["a", "b", "c"]) is None  # "a" predicted 6 times, others 4: not one class
