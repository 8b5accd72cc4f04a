"""Tests for loratune.report: fake run folders written by hand, no model involved."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from loratune.errors import RunError
from loratune.report import write_comparison, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BINARY = ["negative", "positive"]
SIX = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
CONFIG = "model:\n  name_or_path: sentence-transformers/all-MiniLM-L6-v2\ndata:\n  path: ../shared/data/sst2\n"


def _scores(labels: list[str], accuracy: float, f1: float, loss: float) -> dict:
    n = len(labels)
    support = 100
    per_class = {
        label: {"precision": f1, "recall": accuracy, "f1": f1 - 0.01 * i, "support": support}
        for i, label in enumerate(labels)
    }
    # Put `accuracy` of each row on the diagonal and spread the rest over the other columns.
    right = round(accuracy * support)
    matrix = [[right if i == j else (support - right) // (n - 1) for j in range(n)] for i in range(n)]
    return {
        "accuracy": accuracy,
        "precision": f1 + 0.02,
        "recall": accuracy - 0.01,
        "f1": f1,
        "loss": loss,
        "per_class": per_class,
        "confusion_matrix": matrix,
        "num_samples": support * n,
    }


def fake_metrics(
    labels: list[str], epochs: int, method: str = "lora", before_acc: float = 0.5, after_acc: float = 0.86
) -> dict:
    """A metrics.json as docs/run-folder.md describes it, with every optional key filled in."""
    history = [
        {
            "epoch": e,
            "train_loss": 0.6 / e,
            "train_accuracy": 0.7 + 0.05 * e,
            "val_loss": 0.5 / e,
            "val_accuracy": after_acc - 0.04 * (epochs - e),
            "val_precision": 0.74 + 0.04 * e,
            "val_recall": 0.73 + 0.04 * e,
            "val_f1": 0.72 + 0.04 * e,
            "learning_rate": 4e-4 / e,
            "epoch_seconds": 10.0 + e,
        }
        for e in range(1, epochs + 1)
    ]
    size = {"train": 4000, "validation": 800, "test": 100 * len(labels)}
    return {
        "format_version": 1,
        "method": method,
        "model": "/home/someone/models/all-MiniLM-L6-v2",
        "eval_split": "test",
        "labels": labels,
        "before": _scores(labels, before_acc, 0.333, loss=0.69),
        "after": _scores(labels, after_acc, after_acc - 0.005, loss=0.5 / max(epochs, 1) + 0.02),
        "history": history,
        "best_epoch": epochs if epochs else None,
        "best_metric": "val_f1",
        "train_seconds": sum(h["epoch_seconds"] for h in history),
        "trainable_params": 296450 if method != "base" else 0,
        "trainable_params_lora": 147456,
        "total_params": 22861442,
        "peak_memory_mb": 1210.5,
        "adapter_size_bytes": 1234567,
        "precision": "bf16",
        "device": "cpu",
        "throughput": {
            "train_samples_per_s": 900.0,
            "train_tokens_per_s": 12000.0,
            "eval_samples_per_s": 3000.0,
            "padding_ratio": 1.05,
        },
        "data": {
            **{f"{s}_size": n for s, n in size.items()},
            "label_counts": {s: {label: n // len(labels) for label in labels} for s, n in size.items()},
            "truncated": {"train": 12, "validation": 0, "test": 1},
            "max_length": 128,
        },
    }


def write_fake_run(run_dir: Path, labels: list[str], epochs: int = 3, config: str | None = CONFIG, **kwargs) -> Path:
    """Write metrics.json, labels.json and (optionally) config.yaml into `run_dir`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(fake_metrics(labels, epochs, **kwargs)))
    (run_dir / "labels.json").write_text(json.dumps(labels))
    if config is not None:
        (run_dir / "config.yaml").write_text(config)
    return run_dir


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert len(data) > 1000


def png_sources(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', page)


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

    assert md.startswith("# LoRA fine-tuning: all-MiniLM-L6-v2 on sst2\n")
    assert "| accuracy | 50.0% | 86.0% | +36.0 pp |" in md
    assert "| F1 (macro) | 33.3% | 85.5% | +52.2 pp |" in md
    assert "| trainable params (LoRA only) | 147,456 (0.64%) |" in md
    assert "| trainable params (with head) | 296,450 (1.30%) |" in md
    assert "| peak memory | 1,210.5 MB |" in md
    assert "| adapter size on disk | 1.2 MiB |" in md
    assert "| time per epoch (mean) | 12.0 s |" in md
    assert "| precision / device | bf16 / cpu |" in md
    assert "![Accuracy" in md and "(accuracy.png)" in md and "(confusion_matrix.png)" in md
    assert "```yaml\n" + CONFIG.rstrip("\n") + "\n```" in md
    # The local model path is shortened to its folder name so reports don't leak home directories into titles.
    assert "# LoRA fine-tuning: all-MiniLM-L6-v2" in md


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
    run = write_fake_run(tmp_path / "run", labels)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["model"] = "org/<b>model</b>"
    (run / "metrics.json").write_text(json.dumps(metrics))

    page = write_report(run).read_text()
    md = (run / "report.md").read_text()

    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "org/&lt;b&gt;model&lt;/b&gt;" in page
    assert "a|b &amp; c" in page
    # In Markdown, '<' is backslash-escaped (no raw HTML) and '|' can't break the table.
    assert not re.search(r"(?<!\\)<script", md) and r"\<script>" in md
    assert r"a\|b & c" in md


def test_missing_optional_keys_show_a_dash(tmp_path):
    run = write_fake_run(tmp_path / "run", BINARY, config=None)
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("peak_memory_mb", "adapter_size_bytes", "throughput", "trainable_params_lora", "data", "precision"):
        del metrics[key]
    del metrics["before"]["loss"]
    del metrics["history"][0]["epoch_seconds"]
    (run / "metrics.json").write_text(json.dumps(metrics))

    write_report(run)
    md = (run / "report.md").read_text()

    assert "| peak memory | — |" in md
    assert "| adapter size on disk | — |" in md
    assert "| trainable params (LoRA only) | — |" in md
    assert "| train throughput | — |" in md
    assert "| precision / device | — / cpu |" in md
    assert "has no data summary" in md
    assert "## Configuration" not in md
    assert_png(run / "loss.png")


def test_base_run_without_history_still_renders(tmp_path):
    run = write_fake_run(tmp_path / "base", BINARY, epochs=0, method="base")

    write_report(run)
    md = (run / "report.md").read_text()

    assert md.startswith("# Untrained baseline: all-MiniLM-L6-v2 on sst2\n")
    assert "no training epochs" in md
    assert_png(run / "accuracy.png")


def test_missing_metrics_json_raises_a_clear_error(tmp_path):
    with pytest.raises(RunError, match=r"has no metrics\.json; is it a loratune run folder\? Train one"):
        write_report(tmp_path)


def test_copied_run_folder_rebuilds_the_same_report(tmp_path):
    original = write_fake_run(tmp_path / "a" / "run", SIX)
    write_report(original)
    copy = tmp_path / "elsewhere" / "deeper" / "run"
    shutil.copytree(original, copy)
    (copy / "report.md").unlink()

    write_report(copy)

    assert (copy / "report.md").read_text() == (original / "report.md").read_text()
    assert (copy / "report.html").read_text() == (original / "report.html").read_text()


@pytest.fixture
def comparison_runs(tmp_path) -> dict[str, Path]:
    return {
        "base": write_fake_run(tmp_path / "runs" / "base", SIX, epochs=0, method="base", after_acc=0.5),
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
    keys += " total_params peak_memory_mb artifact_size_bytes best_epoch run_dir"
    assert list(rows[0]) == keys.split()
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
    assert "296,450 (1.30%)" in md and "22,861,442" in md and "1.2 MiB" in md
    sources = png_sources(page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in page.lower() and not re.search(r"src=[\"']?https?:", page)


def test_write_comparison_names_the_run_without_metrics(tmp_path, comparison_runs):
    comparison_runs["full"] = tmp_path / "runs" / "missing"

    with pytest.raises(RunError, match="missing has no metrics.json"):
        write_comparison(tmp_path / "compare", comparison_runs)
