"""`loratune compare` trains every method on the same data into its own run folder and tables them together."""

from __future__ import annotations

import json

import pytest

from loratune.cli import main
from loratune.errors import ConfigError
from loratune.training.compare import parse_methods


def test_compare_writes_one_filled_row_per_method(tmp_path, tiny_bert, data_dir, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--data", str(data_dir), "--model", str(tiny_bert), "--output-dir", str(out)]
    argv += ["--methods", "base,head,lora,full", "--epochs", "2", "--batch-size", "8", "--no-progress"]
    assert main(argv) == 0

    rows = {row["method"]: row for row in json.loads((out / "comparison.json").read_text())}
    assert list(rows) == ["base", "head", "lora", "full"]
    for method in ("base", "head", "lora", "full"):
        assert (out / method / "COMPLETE").exists()
        assert rows[method]["peak_memory_mb"] > 0
    assert rows["base"]["train_seconds"] == 0
    assert rows["full"]["trainable_params"] == rows["full"]["total_params"]
    assert 0 < rows["lora"]["trainable_params"] < rows["full"]["trainable_params"]
    assert rows["head"]["trainable_params"] < rows["lora"]["trainable_params"]
    for name in ("comparison.md", "comparison.html", "comparison_val_accuracy.png", "comparison_accuracy_vs_time.png"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr()
    table = printed.out.splitlines()
    assert table[0].split() == ["method", "accuracy", "macro", "F1", "train", "time", "trainable"]
    assert [line.split()[0] for line in table[1:5]] == ["base", "head", "lora", "full"]
    done = [line for line in printed.err.splitlines() if ": accuracy " in line and " -> " in line]
    assert len(done) == 4  # one line per method as it finishes, instead of its own before/after table
    for method, row in rows.items():  # each row holds the "after" scores of its own run
        after = json.loads((out / method / "metrics.json").read_text())["after"]
        assert row["accuracy"] == after["accuracy"] and row["f1"] == after["f1"], method

    table = markdown_table((out / "comparison.md").read_text(), first_header="method")
    assert len(table) == 4
    for cells, (method, row) in zip(table, rows.items(), strict=True):  # same methods, same order as the JSON
        assert cells["method"].lower().startswith(method), (cells["method"], method)
        assert cells["accuracy"] == f"{100 * row['accuracy']:.1f}%", method
        assert cells["F1"] == f"{100 * row['f1']:.1f}%", method
        assert cells["trainable params"].startswith(f"{row['trainable_params']:,} ("), method


def markdown_table(page: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose first column is `first_header`, as {header: cell} dicts."""
    lines = page.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:  # after the header and the alignment row
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)))
    return rows


def test_methods_are_checked_before_anything_trains():
    assert parse_methods("base, lora,dora") == ["base", "lora", "dora"]
    with pytest.raises(ConfigError, match="Unknown method.*'qlora'"):
        parse_methods("lora,qlora")
    with pytest.raises(ConfigError, match="twice"):
        parse_methods("lora,lora")


def test_unknown_method_exits_2_with_one_line(tmp_path, data_dir, capsys):
    assert main(["compare", "--data", str(data_dir), "--methods", "lora,magic", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "magic" in err and len(err.splitlines()) == 1


def test_seeds_give_mean_and_std_and_a_paired_verdict_against_lora(tmp_path):
    from conftest import FAKE_CONFIG, write_fake_findings, write_fake_run

    from loratune.training.compare import write_comparison

    labels = ["negative", "positive"]
    runs = {}
    for method, accuracy in (("lora", 0.95), ("head", 0.55), ("full", 0.95)):
        for seed in (1, 2, 3):
            folder = tmp_path / method / f"seed-{seed}"
            write_fake_run(folder, labels, config=FAKE_CONFIG + f"train:\n  seed: {seed}\n", after_acc=accuracy)
            runs.setdefault(method, []).append(write_fake_findings(folder, labels, accuracy, seed=seed, n=400))
    write_comparison(tmp_path / "cmp", runs)

    rows = {row["method"]: row for row in json.loads((tmp_path / "cmp" / "comparison.json").read_text())}
    scores = [json.loads((tmp_path / "lora" / f"seed-{s}" / "metrics.json").read_text())["after"] for s in (1, 2, 3)]
    accuracies = [score["accuracy"] for score in scores]
    assert rows["lora"]["accuracy"] == pytest.approx(sum(accuracies) / 3)
    assert rows["lora"]["accuracy_std"] > 0 and rows["lora"]["seeds"] == [1, 2, 3]
    assert "vs_lora" not in rows["lora"]
    assert rows["head"]["vs_lora"]["significant"] is True and len(rows["head"]["vs_lora"]["p_values"]) == 3
    assert rows["full"]["vs_lora"]["significant"] is False  # same accuracy: seed noise, not a difference
    table = markdown_table((tmp_path / "cmp" / "comparison.md").read_text(), first_header="method")
    assert table[0]["accuracy"] == f"{100 * rows['lora']['accuracy']:.1f}% ± {100 * rows['lora']['accuracy_std']:.1f}"
    page = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| head |" in page.split("Is the difference from LoRA real?")[1]
    assert "not significant" in page and "| significant |" in page


def test_multilabel_runs_compare_by_macro_f1_micro_f1_and_subset_accuracy(tmp_path):
    from conftest import GO_EMOTIONS, write_fake_multilabel_run

    from loratune.formatting import percent
    from loratune.runs import files
    from loratune.training.compare import write_comparison

    labels = GO_EMOTIONS[:6]
    settings = {"head": (0.3, 0.3), "lora": (0.95, 0.6), "full": (0.95, 0.62)}  # (quality, macro F1)
    runs = {
        method: write_fake_multilabel_run(
            tmp_path / method, labels, quality=quality, seed=i, n=200, method=method, after_f1=f1
        )
        for i, (method, (quality, f1)) in enumerate(settings.items())
    }
    write_comparison(tmp_path / "cmp", runs)

    rows = {row["method"]: row for row in json.loads((tmp_path / "cmp" / "comparison.json").read_text())}
    for method, folder in runs.items():
        after = files.load_summary(folder).after
        assert (rows[method]["f1"], rows[method]["accuracy"]) == (after.f1, after.accuracy)
        assert (rows[method]["micro_f1"], rows[method]["hamming_loss"]) == (after.micro_f1, after.hamming_loss)
    page = (tmp_path / "cmp" / "comparison.md").read_text()
    table = markdown_table(page, first_header="method")
    assert list(table[0])[:4] == ["method", "macro F1", "micro F1", "subset accuracy"]
    assert "accuracy" not in table[0] and "precision" not in table[0]
    for cells, row in zip(table, rows.values(), strict=True):
        assert cells["macro F1"] == percent(row["f1"]) and cells["micro F1"] == percent(row["micro_f1"])
        assert cells["subset accuracy"] == percent(row["accuracy"])
    assert f"Best macro F1: full, {percent(rows['full']['f1'])}" in page
    for name in ("comparison_val_f1.png", "comparison_f1_vs_time.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0 and f"({name})" in page
    assert not (tmp_path / "cmp" / "comparison_val_accuracy.png").exists()
    # The paired test reads the predictions files: a text is right only when its whole label set is.
    lora, head = files.load_predictions(runs["lora"]), files.load_predictions(runs["head"])
    exact = (head["pred_after"] == head["label"]).mean() - (lora["pred_after"] == lora["label"]).mean()
    assert rows["head"]["vs_lora"]["accuracy_difference"] == pytest.approx(exact)
    assert rows["head"]["vs_lora"]["significant"] is True and rows["full"]["vs_lora"]["significant"] is False
    assert "| method | subset accuracy vs LoRA |" in page.split("Is the difference from LoRA real?")[1]


def test_compare_refuses_an_earlier_run_in_its_folder_unless_overwrite(
    bert_run, tmp_path, tiny_bert, data_dir, capsys
):
    import shutil

    out = tmp_path / "cmp"
    earlier = shutil.copytree(bert_run.run_dir, out / "lora")
    metrics = (earlier / "metrics.json").read_bytes()
    argv = ["compare", "--data", str(data_dir), "--model", str(tiny_bert), "--output-dir", str(out)]
    argv += ["--methods", "lora", "--epochs", "1", "--batch-size", "8", "--no-progress", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"{earlier} already holds a finished run" in err and "--overwrite" in err
    assert (earlier / "metrics.json").read_bytes() == metrics  # refused before anything trained

    assert main([*argv, "--overwrite"]) == 0
    assert len(json.loads((earlier / "metrics.json").read_text())["history"]) == 1  # the new one-epoch run
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # swapped in, nothing left beside


def test_compare_never_writes_its_runs_into_a_run_folder(bert_run, data_dir, capsys):
    argv = ["compare", "--data", str(data_dir), "--output-dir", str(bert_run.run_dir), "--methods", "lora"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is a loratune finished run folder, not a folder of runs" in err and err.count("\n") == 1


def test_compare_where_every_method_fails_is_one_line_and_exit_2(tmp_path, data_dir, capsys):
    missing = tmp_path / "no-such-model"
    argv = ["compare", "--data", str(data_dir), "--model", str(missing), "--output-dir", str(tmp_path / "cmp")]
    assert main([*argv, "--methods", "head,lora", "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: Every method failed (head (seed 42), lora (seed 42))")
    assert not any("Traceback" in line for line in err)
