"""Tests for loratune.report.run_report, loratune.formatting and the comparison page in loratune.training.compare.

Most run folders here are built from the schema (conftest's `fake_summary`, saved with `files.save_summary`), so
no model is involved; the untrained baseline and the damaged-file tests use a real `--method none` run of a tiny model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (  # tests/ is on sys.path under pytest's default import mode
    FAKE_CONFIG,
    PNG_MAGIC,
    SIX,
    fake_summary,
    save_run_folder,
    tiny_config,
    write_fake_run,
)

import loratune
from loratune import formatting
from loratune.cli import main
from loratune.errors import RunError
from loratune.report.run_report import write_report
from loratune.runs import files
from loratune.schema import DataSummary, Throughput
from loratune.training.compare import write_comparison

BINARY = ["negative", "positive"]


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, tiny_bert, data_dir) -> Path:
    """A real `--method none` run of the tiny BERT: the untrained baseline, as `loratune compare` writes it."""
    cfg = tiny_config(tiny_bert, data_dir, tmp_path_factory.mktemp("runs") / "base", lora__method="none")
    return Path(loratune.run(cfg).run_dir)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert len(data) > 1000


def png_sources(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', page)


# ---------------------------------------------------------------------------------------------------------------------
# The run report


@pytest.mark.parametrize(("labels", "epochs"), [(BINARY, 1), (BINARY, 3), (SIX, 1), (SIX, 3)])
def test_write_report_writes_every_file(tmp_path, labels, epochs):
    run = write_fake_run(tmp_path / "run", labels, epochs)

    html_path = write_report(run)

    assert html_path == run / "report.html"
    plots = ["accuracy.png", "loss.png", "confusion_matrix.png"] + (["per_class_f1.png"] if len(labels) > 2 else [])
    for name in plots:
        assert_png(run / name)
    assert (run / "report.md").stat().st_size > 0
    assert len(png_sources(html_path.read_text())) == len(plots)


def test_per_class_f1_plot_only_for_more_than_two_classes(tmp_path):
    binary = write_fake_run(tmp_path / "binary", BINARY)
    six = write_fake_run(tmp_path / "six", SIX)

    write_report(binary)
    write_report(six)

    assert not (binary / "per_class_f1.png").exists()
    assert "per_class_f1.png" not in (binary / "report.md").read_text()
    assert "![" in (six / "report.md").read_text() and "(per_class_f1.png)" in (six / "report.md").read_text()


def test_report_md_shows_before_and_after_as_percentages(tmp_path):
    run = write_fake_run(tmp_path / "run", BINARY, before_acc=0.5)

    write_report(run)
    md = (run / "report.md").read_text()

    # The local model path is shortened to its folder name so reports don't leak home directories into titles.
    assert md.startswith("# LoRA fine-tuning: all-MiniLM-L6-v2 on sst2\n")
    assert "| accuracy | 50.0% | 86.0% | +36.0 pp |" in md
    assert "| F1 (macro) | 33.3% | 85.5% | +52.2 pp |" in md
    assert "After: the best epoch (3, by val\\_f1)" in md
    assert "| best epoch | 3 (by val\\_f1) |" in md
    assert "| trainable params (LoRA only) | 147,456 (0.64%) |" in md
    assert "| trainable params (with head) | 296,450 (1.30%) |" in md
    assert "| peak memory | 1,210.5 MB |" in md
    assert "| adapter size on disk | 1.2 MiB |" in md
    assert "| time per epoch (mean) | 12.0 s |" in md
    assert "| precision / device | bf16 / cpu |" in md
    assert "| train throughput | 900.0 samples/s |" in md and "| padding ratio | 1.05 |" in md
    assert "| test | 200 | 1 (0.5%) |" in md  # examples in the split, then texts truncated with their share
    assert "| 3 ★ | 0.200 | 85.0% | 0.167 | 86.0% |" in md  # the best epoch is starred in the history
    assert "![Accuracy" in md and "(accuracy.png)" in md and "(confusion_matrix.png)" in md
    assert "```yaml\n" + FAKE_CONFIG.rstrip("\n") + "\n```" in md


def test_report_html_is_self_contained(tmp_path):
    run = write_fake_run(tmp_path / "run", SIX)

    page = write_report(run).read_text()

    assert '<meta name="viewport"' in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    sources = png_sources(page)
    assert len(sources) == 4
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert page.count("<table") >= 5


def test_label_names_and_model_are_escaped(tmp_path):
    labels = ["<script>alert(1)</script>", "a|b & c"]
    summary = dataclasses.replace(fake_summary(labels), model="org/<b>model</b>")
    run = save_run_folder(tmp_path / "run", summary)

    page = write_report(run).read_text()
    md = (run / "report.md").read_text()

    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "org/&lt;b&gt;model&lt;/b&gt;" in page
    assert "a|b &amp; c" in page
    # In Markdown, '<' is backslash-escaped (no raw HTML) and '|' can't break the table.
    assert not re.search(r"(?<!\\)<script", md) and r"\<script>" in md
    assert r"a\|b & c" in md


def test_missing_or_non_finite_values_show_a_dash(tmp_path):
    summary = fake_summary(BINARY)
    history = [dataclasses.replace(summary.history[0], epoch_seconds=math.nan), *summary.history[1:]]
    summary = dataclasses.replace(
        summary,
        peak_memory_mb=None,
        adapter_size_bytes=None,
        throughput=Throughput(),
        data=DataSummary(),
        precision="",
        before=dataclasses.replace(summary.before, accuracy=math.inf),
        history=history,
    )
    run = save_run_folder(tmp_path / "run", summary)

    write_report(run)
    md = (run / "report.md").read_text()

    assert "| peak memory | — |" in md
    assert "| adapter size on disk | — |" in md
    assert "| train throughput | — |" in md and "| padding ratio | — |" in md
    assert "| precision / device | — / cpu |" in md
    assert "| accuracy | — | 86.0% | — |" in md
    assert "| time per epoch (mean) | — |" in md
    assert "| 4.00e-04 | — |" in md  # the first epoch's time, after its learning rate
    assert_png(run / "accuracy.png")
    assert_png(run / "loss.png")


def test_a_real_baseline_run_is_titled_untrained_baseline(tmp_path, baseline_run):
    run = tmp_path / "base"
    shutil.copytree(baseline_run, run)
    (run / "report.md").unlink()

    write_report(run)
    md = (run / "report.md").read_text()

    summary = files.load_summary(run)
    assert summary.method == "none"
    assert md.startswith(f"# Untrained baseline: {Path(summary.model).name} on {Path(summary.data.source).name}\n")
    assert "fine-tuning" not in md.splitlines()[0]
    assert "| method | Base (untrained) |" in md
    # No epochs ran, so there is no best epoch to name, and no history.
    assert "| best epoch | — |" in md and "the best epoch" not in md
    assert "no training epochs" in md
    assert_png(run / "accuracy.png")


def test_report_of_a_truncated_metrics_json_exits_2_with_one_line(tmp_path, baseline_run, capsys):
    run = tmp_path / "base"
    shutil.copytree(baseline_run, run)
    metrics = run / files.METRICS_FILE
    metrics.write_text(metrics.read_text()[: metrics.stat().st_size // 2])
    (run / "report.md").unlink()

    status = main(["report", str(run)])

    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1
    assert str(metrics) in err and "damaged" in err
    assert not (run / "report.md").exists()


def test_missing_metrics_json_raises_a_clear_error(tmp_path):
    with pytest.raises(RunError, match=r"metrics\.json is missing; is .* a loratune run folder\?"):
        write_report(tmp_path)


def test_labels_json_names_the_classes_and_a_folder_without_it_is_refused_in_one_line(tmp_path):
    summary = fake_summary(BINARY)
    renamed = save_run_folder(tmp_path / "renamed", summary, labels=["neg", "pos"])
    without = save_run_folder(tmp_path / "without", summary, labels=[])

    write_report(renamed)

    assert "| neg | — | — | — | — | — | — |" in (renamed / "report.md").read_text()
    assert not (without / files.LABELS_FILE).exists()
    with pytest.raises(RunError, match=r"labels\.json is missing; is .* a loratune run folder\?") as caught:
        write_report(without)
    assert "\n" not in str(caught.value) and not (without / "report.md").exists()


def test_a_config_that_does_not_parse_is_refused_in_one_line(tmp_path):
    broken = "data: [unclosed\nmodel: x\n"
    run = write_fake_run(tmp_path / "run", BINARY, config=broken)

    with pytest.raises(RunError, match=r"config\.yaml is damaged \(.*not valid YAML.*\); restore it") as caught:
        write_report(run)
    assert "\n" not in str(caught.value) and not (run / "report.md").exists()


def test_copied_run_folder_rebuilds_the_same_report(tmp_path):
    original = write_fake_run(tmp_path / "a" / "run", SIX)
    write_report(original)
    copy = tmp_path / "elsewhere" / "deeper" / "run"
    shutil.copytree(original, copy)
    (copy / "report.md").unlink()

    write_report(copy)

    assert (copy / "report.md").read_text() == (original / "report.md").read_text()
    assert (copy / "report.html").read_text() == (original / "report.html").read_text()
    assert (copy / "accuracy.png").read_bytes() == (original / "accuracy.png").read_bytes()


def test_report_and_comparison_do_not_import_torch():
    modules = "loratune.report.run_report, loratune.report.comparison, loratune.training.compare"
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if m == 'torch'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------------------
# Number formatting


@pytest.mark.parametrize(
    "render",
    [
        formatting.percent,
        formatting.count,
        formatting.fixed,
        formatting.sci,
        formatting.seconds,
        formatting.megabytes,
        formatting.size,
    ],
)
@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf, True, "12"])
def test_every_formatter_shows_a_dash_for_a_missing_or_non_finite_value(render, value):
    assert render(value) == "—"


@pytest.mark.parametrize("render", [formatting.change, formatting.share, formatting.share_of_count])
def test_two_value_formatters_show_a_dash_when_either_value_is_missing(render):
    assert render(None, 10) == "—"
    assert render(10, math.nan) == "—"
    assert render(10, 10) != "—"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (formatting.percent(0.8612), "86.1%"),
        (formatting.percent(0.5, digits=0), "50%"),
        (formatting.change(0.86, 0.5), "+36.0 pp"),
        (formatting.change(0.4, 0.5), "-10.0 pp"),
        (formatting.count(1234567.4), "1,234,567"),
        (formatting.fixed(1234.5), "1,234.500"),
        (formatting.fixed(900, digits=1, unit="samples/s"), "900.0 samples/s"),
        (formatting.sci(0.0004), "4.00e-04"),
        (formatting.seconds(12), "12.0 s"),
        (formatting.seconds(600), "600 s (10.0 min)"),
        (formatting.megabytes(1210.5), "1,210.5 MB"),
        (formatting.size(1023), "1,023 B"),
        (formatting.size(1234567), "1.2 MiB"),
        (formatting.share(296450, 22861442), "296,450 (1.30%)"),
        (formatting.share(1, 10**9), "1 (<0.01%)"),
        (formatting.share(5, 0), "5"),
        (formatting.share_of_count(1800, 4000), "1,800 (45.0%)"),
        (formatting.share_of_count(3, 0), "3"),
    ],
)
def test_formatters_write_numbers_as_the_report_shows_them(text, expected):
    assert text == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ("/home/someone/models/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        ("C:\\models\\bert", "bert"),
        ("", "—"),
    ],
)
def test_short_name_keeps_hub_ids_and_shortens_local_paths(name, expected):
    assert formatting.short_name(name) == expected


# ---------------------------------------------------------------------------------------------------------------------
# The comparison page


@pytest.fixture
def comparison_runs(tmp_path) -> dict[str, Path]:
    return {
        "base": write_fake_run(tmp_path / "runs" / "base", SIX, epochs=0, method="none", after_acc=0.5),
        "head": write_fake_run(tmp_path / "runs" / "head", SIX, epochs=2, method="head", after_acc=0.71),
        "lora": write_fake_run(tmp_path / "runs" / "lora", SIX, epochs=3, method="lora"),
    }


def test_write_comparison_writes_one_row_per_method(tmp_path, comparison_runs):
    out = tmp_path / "compare"

    html_path = write_comparison(out, comparison_runs)

    assert html_path == out / "comparison.html"
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["method"] for r in rows] == ["base", "head", "lora"]
    keys = "method accuracy precision recall f1 train_seconds seconds_per_epoch trainable_params trainable_percent"
    keys += " total_params peak_memory_mb artifact_size_bytes best_epoch single_class run_dir"
    assert list(rows[0]) == [*keys.split(), "vs_lora"]  # every method but LoRA is tested against it
    base, head, lora = rows
    assert base["train_seconds"] == 0 and base["seconds_per_epoch"] is None and base["trainable_percent"] == 0
    assert head["seconds_per_epoch"] == pytest.approx(11.5)
    assert lora["accuracy"] == 0.86 and lora["f1"] == 0.855
    assert lora["trainable_params"] == 296450
    assert lora["trainable_percent"] == pytest.approx(100 * 296450 / 22861442)
    assert lora["artifact_size_bytes"] == 1234567 and lora["best_epoch"] == 3
    assert lora["run_dir"] == "../runs/lora"


def test_comparison_md_and_html_hold_the_table_and_both_plots(tmp_path, comparison_runs):
    out = tmp_path / "compare"

    page = write_comparison(out, comparison_runs).read_text()
    md = (out / "comparison.md").read_text()

    for name in ("comparison_val_accuracy.png", "comparison_accuracy_vs_time.png"):
        assert_png(out / name)
        assert f"({name})" in md
    assert "| lora | 86.0% |" in md
    assert "Most accurate: lora, 86.0% in 36.0 s." in md
    assert "296,450 (1.30%)" in md and "22,861,442" in md and "1.2 MiB" in md
    sources = png_sources(page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in page.lower() and not re.search(r"src=[\"']?https?:", page)


def test_comparison_names_a_real_baseline_row_base(tmp_path, baseline_run, comparison_runs):
    runs = {**comparison_runs, "base": baseline_run}
    out = tmp_path / "compare"

    write_comparison(out, runs)
    md = (out / "comparison.md").read_text()

    base = json.loads((out / "comparison.json").read_text())[0]
    accuracy = files.load_summary(baseline_run).after.accuracy
    assert base["method"] == "base" and base["accuracy"] == accuracy and base["train_seconds"] == 0
    assert f"| base | {formatting.percent(accuracy)} |" in md
    assert "| none |" not in md and "Untrained" not in md
    assert_png(out / "comparison_val_accuracy.png")


def test_every_row_shares_the_base_models_total_params(tmp_path, comparison_runs):
    lora = files.load_summary(comparison_runs["lora"])
    files.save_summary(comparison_runs["lora"], dataclasses.replace(lora, total_params=lora.total_params + 4096))
    out = tmp_path / "compare"

    write_comparison(out, comparison_runs)

    rows = json.loads((out / "comparison.json").read_text())
    base_total = files.load_summary(comparison_runs["base"]).total_params
    assert {r["total_params"] for r in rows} == {base_total}
    lora_row = rows[2]
    assert lora_row["trainable_percent"] == pytest.approx(100 * lora_row["trainable_params"] / base_total)


def test_a_method_that_predicts_one_class_is_flagged_in_the_table_and_the_log(tmp_path, comparison_runs, caplog):
    head = files.load_summary(comparison_runs["head"])
    n = len(head.after.confusion_matrix)
    one_column = [[sum(row) if j == 1 else 0 for j in range(n)] for row in head.after.confusion_matrix]
    after = dataclasses.replace(head.after, confusion_matrix=one_column)
    files.save_summary(comparison_runs["head"], dataclasses.replace(head, after=after))
    out = tmp_path / "compare"

    write_comparison(out, comparison_runs)

    rows = json.loads((out / "comparison.json").read_text())
    labels = files.load_labels(comparison_runs["head"])
    assert [r["single_class"] for r in rows] == [None, labels[1], None]
    md = (out / "comparison.md").read_text()
    assert "| head ⚠ one class |" in md and f"Warning: head predicted one class ({labels[1]})" in md
    assert "| lora |" in md and "lora ⚠" not in md
    assert f"head predicted one class ({labels[1]})" in caplog.text


def test_write_comparison_names_the_run_without_metrics(tmp_path, comparison_runs):
    comparison_runs["full"] = tmp_path / "runs" / "missing"

    with pytest.raises(RunError, match=r"missing/metrics\.json is missing"):
        write_comparison(tmp_path / "compare", comparison_runs)


def test_a_wrapped_label_set_breaks_after_its_separators_never_inside_a_word(tmp_path):
    from loratune.report.render import Table, render_html

    table = Table(["text", "gold"], [["a comment", "admiration|approval|gratitude"]], wrap=(1,))
    page = render_html("t", [table], tmp_path, kicker="k", dpi=100)
    assert "admiration|<wbr>approval|<wbr>gratitude" in page
    assert re.search(r"td\.wrap \{[^}]*overflow-wrap: break-word", page)  # a word breaks only when it alone is wider
