"""Tests for loratune.report.label_tables and what the run report shows of multi-label and imbalanced runs.

Every run folder here is fake (conftest's `write_fake_multilabel_run`, or a `RunSummary` built below), so no model
is involved.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from conftest import (
    GO_EMOTIONS,
    PNG_MAGIC,
    fake_multilabel_summary,
    fake_summary,
    fake_supports,
    fake_thresholds,
    save_run_folder,
    write_fake_multilabel_run,
)

from loratune import formatting
from loratune.report import plots
from loratune.report.label_tables import MULTI_LABEL_RESULTS, RECALL_ROWS
from loratune.report.run_report import write_report
from loratune.runs import files
from loratune.schema import ClassScores, Metrics
from loratune.scoring.changes import examples
from loratune.task import SINGLE

SIX_EMOTIONS = GO_EMOTIONS[:6]


def section(md: str, heading: str) -> str:
    """The Markdown between `## heading` and the next heading."""
    return md.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in `text`, as rows of cells (the header first, the alignment row left out)."""
    found: list[list[list[str]]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("| "):
            if not previous.startswith("| "):
                found.append([])
            if not line.startswith("| :---"):
                found[-1].append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        previous = line
    return found


def html_cell_class(page: str, row_name: str, column: int) -> str:
    """The class of the `column`-th cell of the HTML row whose first cell is `row_name`."""
    row = re.search(rf"<tr><td>{re.escape(row_name)}</td>(.*?)</tr>", page).group(1)
    return re.findall(r'<td class="([^"]*)">', row)[column - 1]


# ---------------------------------------------------------------------------------------------------------------------
# Multi-label runs


def test_multilabel_first_table_has_subset_micro_macro_samples_and_hamming_loss(tmp_path):
    run = write_fake_multilabel_run(tmp_path / "run", SIX_EMOTIONS)
    summary = files.load_summary(run)

    page = write_report(run).read_text()
    md = (run / "report.md").read_text()

    first = tables(section(md, "Results"))[0]
    assert first[0] == ["metric", "before", "after", "change"]
    assert [row[0] for row in first[1:]] == [name for _, name in MULTI_LABEL_RESULTS]
    rows = {row[0]: row[1:] for row in first[1:]}
    for key, name in MULTI_LABEL_RESULTS:
        before, after = getattr(summary.before, key), getattr(summary.after, key)
        expected = [formatting.percent(before), formatting.percent(after), formatting.change(after, before)]
        assert rows[name] == expected, name
    assert rows["Hamming loss (lower is better)"][2].startswith("-")
    # A fall in Hamming loss is good news, coloured as a rise in F1 is; a rise in a score stays green as well.
    assert html_cell_class(page, "Hamming loss (lower is better)", 3) == "r up"
    assert html_cell_class(page, "F1 (micro)", 3) == "r up"
    assert md.startswith("# LoRA fine-tuning: all-MiniLM-L6-v2 on go\\_emotions\n")
    assert "Subset accuracy" in md.split("\n## ")[0] and "micro F1" in md.split("\n## ")[0]


def test_per_label_table_is_sorted_by_support_and_shows_each_threshold(tmp_path):
    run = write_fake_multilabel_run(tmp_path / "run", GO_EMOTIONS)

    write_report(run)
    md = (run / "report.md").read_text()

    assert "## Per class" not in md
    table = tables(section(md, "Per label"))[0]
    assert table[0] == ["label", "support", "precision", "recall", "F1", "F1 before", "F1 change", "threshold"]
    supports, thresholds = fake_supports(GO_EMOTIONS), fake_thresholds(GO_EMOTIONS)
    shown = [row[0] for row in table[1:]]
    assert shown == sorted(GO_EMOTIONS, key=lambda label: -supports[label])
    assert shown != GO_EMOTIONS  # the fake's supports are not in label order, so the sort is visible
    for label, support, *_, threshold in table[1:]:
        assert support.startswith(f"{supports[label]:,} (")
        assert threshold == f"{thresholds[label]:.2f}"


def test_multilabel_report_draws_a_per_label_chart_and_no_confusion_matrix(tmp_path):
    run = write_fake_multilabel_run(tmp_path / "run", GO_EMOTIONS)

    page = write_report(run).read_text()
    md = (run / "report.md").read_text()

    chart = run / "per_label_f1.png"
    assert chart.read_bytes()[:8] == PNG_MAGIC
    assert "(per_label_f1.png)" in md
    assert not (run / "confusion_matrix.png").exists() and not (run / "per_class_f1.png").exists()
    assert "confusion_matrix" not in md and "Confusion matrix" not in page
    # accuracy, loss, per-label F1 and the reliability diagram, each embedded in the page
    images = re.findall(r'<img src="data:image/png;base64,[^"]*" alt="([^"]*)"', page)
    assert len(images) == 4
    assert any(alt.startswith("Per-label F1") for alt in images)


def test_multilabel_changes_count_whole_label_sets_and_leave_out_confused_pairs(tmp_path):
    run = write_fake_multilabel_run(tmp_path / "run", SIX_EMOTIONS, quality=0.9)
    table = files.load_predictions(run)

    write_report(run)
    changed = section((run / "report.md").read_text(), "What changed")

    assert "right only when its whole label set is" in changed
    assert "Most-confused label pairs are a single-label view" in changed
    assert "| true | predicted |" not in changed
    fixed = examples(table, "fixed", 5)
    assert not fixed.empty
    for row in fixed.itertuples():
        # Label sets read "a, b" (the file joins them with "|"), the empty set "(none)".
        gold = ", ".join(row.label.split("|")) if row.label else "(none)"
        after = ", ".join(row.pred_after.split("|")) if row.pred_after else "(none)"
        assert f"| {gold} |" in changed and f"| {after} |" in changed
    assert "\\|" not in changed  # no set shown with its separator


def test_multilabel_reliability_diagram_plots_fraction_true_against_predicted_probability(tmp_path):
    run = write_fake_multilabel_run(tmp_path / "run", SIX_EMOTIONS)

    write_report(run)
    confidence = section((run / "report.md").read_text(), "Confidence")

    assert "fraction true against predicted probability" in confidence
    assert "fraction of true labels" in confidence and "sigmoid" in confidence
    bins = files.load_calibration(run)["bins"]
    plots.plot_reliability(bins, tmp_path / "single.png", SINGLE)
    assert (tmp_path / "single.png").read_bytes() != (run / "reliability.png").read_bytes()  # other axis labels


def test_a_multilabel_folder_without_thresholds_shows_dashes(tmp_path):
    run = save_run_folder(tmp_path / "run", fake_multilabel_summary(SIX_EMOTIONS))

    write_report(run)
    per_label = section((run / "report.md").read_text(), "Per label")

    assert f"{files.THRESHOLDS_FILE} is missing" in per_label
    assert all(row[-1] == "—" for row in tables(per_label)[0][1:])


# ---------------------------------------------------------------------------------------------------------------------
# Imbalanced single-label runs and class weights

SPAM = ["ham", "spam"]


def spam_scores(recall_ham: float, recall_spam: float, precision_spam: float) -> Metrics:
    """SMS-spam-like scores: 966 ham and 149 spam texts (13% spam)."""
    support = {"ham": 966, "spam": 149}
    right = {"ham": round(recall_ham * 966), "spam": round(recall_spam * 149)}
    matrix = [[right["ham"], 966 - right["ham"]], [149 - right["spam"], right["spam"]]]
    per_class = {
        "ham": ClassScores(precision=0.97, recall=recall_ham, f1=0.95, support=support["ham"]),
        "spam": ClassScores(precision=precision_spam, recall=recall_spam, f1=0.5, support=support["spam"]),
    }
    return Metrics(
        accuracy=(right["ham"] + right["spam"]) / 1115,
        precision=0.8,
        recall=(recall_ham + recall_spam) / 2,
        f1=0.7,
        per_class=per_class,
        confusion_matrix=matrix,
        num_samples=1115,
        balanced_accuracy=(recall_ham + recall_spam) / 2,
    )


def spam_summary(**changes):
    before = spam_scores(1.0, 0.0, 0.0)  # the untrained head calls every text ham
    after = spam_scores(0.995, 0.906, 0.96)
    return dataclasses.replace(fake_summary(SPAM), before=before, after=after, **changes)


def test_single_label_first_table_shows_balanced_accuracy_and_each_class_recall(tmp_path):
    run = save_run_folder(tmp_path / "run", spam_summary())

    write_report(run)
    md = (run / "report.md").read_text()

    first = tables(section(md, "Results"))[0]
    names = [row[0] for row in first[1:]]
    assert names == [
        "accuracy",
        "precision (macro)",
        "recall (macro)",
        "F1 (macro)",
        "balanced accuracy",
        "recall: ham",
        "recall: spam",
    ]
    rows = {row[0]: row[1:] for row in first[1:]}
    assert rows["accuracy"] == ["86.6%", "98.3%", "+11.7 pp"]  # accuracy hides that spam is never found before
    balanced = [spam_summary().before.balanced_accuracy, spam_summary().after.balanced_accuracy]
    assert balanced[0] == 0.5
    assert rows["balanced accuracy"] == [*map(formatting.percent, balanced), formatting.change(*balanced[::-1])]
    assert rows["recall: spam"] == ["0.0%", "90.6%", "+90.6 pp"]
    assert rows["recall: ham"] == ["100.0%", "99.5%", "-0.5 pp"]
    assert "Balanced accuracy is the mean of the classes' recall" in section(md, "Results")
    # The single-label report keeps its confusion matrix and per-class table.
    assert (run / "confusion_matrix.png").exists() and "## Per class" in md and "## Per label" not in md


def test_many_classes_leave_per_class_recall_to_the_per_class_table(tmp_path):
    labels = [f"class{i}" for i in range(RECALL_ROWS + 2)]
    run = save_run_folder(tmp_path / "run", fake_summary(labels))

    write_report(run)
    results = section((run / "report.md").read_text(), "Results")

    assert "| balanced accuracy |" in results
    assert "| recall: " not in results and "Each class's recall is in the per-class table" in results


def test_class_weights_show_which_weights_trained_the_model(tmp_path):
    single = save_run_folder(tmp_path / "single", spam_summary(class_weights={"ham": 0.577, "spam": 3.742}))
    weights = {label: 1.0 + i for i, label in enumerate(SIX_EMOTIONS)}
    multi = save_run_folder(tmp_path / "multi", fake_multilabel_summary(SIX_EMOTIONS, class_weights=weights))
    plain = save_run_folder(tmp_path / "plain", spam_summary())

    for run in (single, multi, plain):
        write_report(run)
    training = {run.name: section((run / "report.md").read_text(), "Training") for run in (single, multi, plain)}

    assert "| class weights | see below |" in training["single"]
    assert tables(training["single"])[1] == [["label", "class weight"], ["ham", "0.58"], ["spam", "3.74"]]
    multi_table = tables(training["multi"])[1]
    assert multi_table[0] == ["label", "weight of positives"]
    assert {label: float(weight) for label, weight in multi_table[1:]} == weights
    assert "positive examples weigh" in training["multi"]
    assert "| class weights | none |" in training["plain"] and len(tables(training["plain"])) == 1


def test_multilabel_report_of_a_copied_folder_is_the_same(tmp_path):
    import shutil

    original = write_fake_multilabel_run(tmp_path / "a" / "run", SIX_EMOTIONS)
    write_report(original)
    copy = Path(shutil.copytree(original, tmp_path / "b" / "run"))
    (copy / "report.md").unlink()

    write_report(copy)

    assert (copy / "report.md").read_text() == (original / "report.md").read_text()
    assert (copy / "per_label_f1.png").read_bytes() == (original / "per_label_f1.png").read_bytes()
