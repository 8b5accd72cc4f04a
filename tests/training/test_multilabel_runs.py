"""Whole multi-label and class-weighted runs on a tiny model: training learns label sets, the run folder keeps the
thresholds and weights, and predict, evaluate, the export and compare agree with what the run reported."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FILLER, TAGS, pipeline_probabilities, tagged_rows, tiny_config, write_csv

import loratune
from loratune.export.plain import export_run
from loratune.runs import files
from loratune.runs.folder import load_run


@pytest.fixture(scope="module")
def tagged_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tagged")
    for split, n, seed in (("train", 96, 0), ("validation", 32, 1), ("test", 32, 2)):
        write_csv(folder / f"{split}.csv", tagged_rows(n, seed))
    return folder


@pytest.fixture(scope="module")
def multi_run(tiny_bert, tagged_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("multi") / "run"
    cfg = tiny_config(tiny_bert, tagged_dir, out, train__num_epochs=16, train__learning_rate=2e-2, data__max_length=16)
    return loratune.run(cfg)


def test_a_multi_label_run_learns_label_sets_and_keeps_its_thresholds(multi_run):
    s = multi_run.summary
    assert s.task == "multi" and s.after.micro_f1 is not None
    assert s.labels == sorted(TAGS)  # the empty cells are the empty set, not a label
    assert s.after.f1 > s.before.f1 + 0.3 and s.after.micro_f1 > 0.6
    thresholds = files.load_thresholds(multi_run.run_dir, s.labels)
    assert thresholds is not None and all(0 < t < 1 for t in thresholds)
    assert files.load_run_config(multi_run.run_dir).data.task == "multi"
    table = files.load_predictions(multi_run.run_dir)
    right = (table["label"] == table["pred_after"]).mean()
    assert right == pytest.approx(s.after.accuracy)  # the table decides as the "after" scores do


def test_predict_gives_label_sets_over_their_thresholds(multi_run):
    predictor = load_run(multi_run.run_dir).predictor(precision="fp32")
    both, neither = predictor.predict(["the music and the story", "the movie was a plot"])
    assert set(both["labels"]) == {"action", "romance"}
    assert both["scores"] == sorted(both["scores"], reverse=True)
    assert set(both["probabilities"]) == set(multi_run.summary.labels)
    assert neither["labels"] == []


def test_evaluate_reproduces_the_after_scores(multi_run, tagged_dir, tmp_path):
    out = tmp_path / "scores.json"
    command = [sys.executable, "-m", "loratune", "evaluate", str(multi_run.run_dir), "--data", str(tagged_dir)]
    done = subprocess.run([*command, "--output", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    scores = json.loads(out.read_text())
    assert scores["f1"] == pytest.approx(multi_run.after.f1) and scores["micro_f1"] == pytest.approx(
        multi_run.after.micro_f1
    )
    assert "subset accuracy" in done.stdout


def test_cli_predict_prints_and_writes_label_sets(multi_run, tmp_path):
    command = [sys.executable, "-m", "loratune", "predict", str(multi_run.run_dir), "--precision", "fp32"]
    done = subprocess.run([*command, "--text", "an actor and a story"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "comedy (" in done.stdout and "romance (" in done.stdout
    for suffix in ("csv", "jsonl"):
        out = tmp_path / f"p.{suffix}"
        done = subprocess.run([*command, "--text", "an actor and a story", "--output", str(out)], capture_output=True)
        assert done.returncode == 0
    assert json.loads((tmp_path / "p.jsonl").read_text())["predicted_labels"] == ["comedy", "romance"]
    assert "comedy|romance" in (tmp_path / "p.csv").read_text()


def test_the_export_in_a_plain_pipeline_with_the_thresholds_gives_predicts_label_sets(multi_run, tmp_path):
    folder = export_run(multi_run.run_dir, tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    thresholds = json.loads((folder / files.THRESHOLDS_FILE).read_text())
    assert thresholds == config["label_thresholds"]
    texts = [" ".join(random.Random(i).choices([*TAGS.values(), *FILLER], k=6)) for i in range(40)]
    labels = multi_run.summary.labels
    probs = pipeline_probabilities(folder, labels, texts)
    exported = [
        sorted(lab for lab, p in zip(labels, row, strict=True) if p >= thresholds[lab]) for row in probs.tolist()
    ]
    predicted = load_run(multi_run.run_dir).predictor(precision="fp32").predict(texts)
    assert exported == [sorted(p["labels"]) for p in predicted]
    assert torch.allclose(probs, torch.tensor([list(p["probabilities"].values()) for p in predicted]), atol=1e-4)


def test_the_report_of_a_multi_label_run_has_no_confusion_matrix(multi_run):
    text = (multi_run.run_dir / "report.md").read_text()
    assert "Hamming" in text and "micro" in text.lower()
    assert not (multi_run.run_dir / "confusion_matrix.png").exists()


def test_balanced_class_weights_are_recorded_and_weigh_the_rare_class(tiny_bert, tmp_path):
    rows = [
        {"text": f"the movie {'awful' if i % 8 == 0 else 'great'} {i % 5}", "label": "bad" if i % 8 == 0 else "good"}
        for i in range(120)
    ]
    for split, part in (("train", rows[:80]), ("validation", rows[80:100]), ("test", rows[100:])):
        write_csv(tmp_path / "data" / f"{split}.csv", part)
    cfg = tiny_config(tiny_bert, tmp_path / "data", tmp_path / "run", train__class_weights="balanced")
    summary = loratune.run(cfg).summary
    weights = summary.class_weights
    assert weights is not None and weights["bad"] > 3 * weights["good"]
    assert weights["bad"] == pytest.approx(80 / (2 * 10))
    assert summary.after.balanced_accuracy is not None
    report = (tmp_path / "run" / "report.md").read_text()
    assert "balanced" in report.lower()


def test_a_multi_label_head_starts_at_the_label_prior(tiny_bert):
    from loratune.config import LoraArgs, ModelArgs
    from loratune.model.build import build_model

    prior = [0.1, 0.5, 0.02]
    built = build_model(ModelArgs(name_or_path=str(tiny_bert)), LoraArgs(), list(TAGS), label_prior=prior)
    assert built.model.config.problem_type == "multi_label_classification"
    heads = [m for n, m in built.model.named_modules() if n.endswith("classifier.modules_to_save.default")]
    expected = torch.logit(torch.tensor(prior))
    assert torch.allclose(heads[0].bias.detach(), expected, atol=1e-5)


def test_the_summary_of_a_multi_label_run_leads_with_macro_f1_and_names_subset_accuracy(multi_run, capsys):
    import dataclasses

    from loratune.cli.commands import _print_summary

    s = multi_run.summary
    _print_summary(s, multi_run.run_dir)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("macro F1") and any(line.startswith("subset accuracy") for line in lines)
    assert not any(line.startswith("accuracy ") for line in lines)
    worse = dataclasses.replace(s, after=dataclasses.replace(s.after, hamming_loss=s.before.hamming_loss + 0.01))
    _print_summary(worse, multi_run.run_dir)
    assert "note: Hamming loss rose: each label's threshold is chosen for its F1" in capsys.readouterr().out


def test_at_least_one_gives_a_text_without_labels_its_most_probable_one(multi_run, tmp_path, capsys):
    from loratune.cli import main

    text = "the movie was a plot"
    predictor = load_run(multi_run.run_dir).predictor(precision="fp32")
    plain = predictor.predict([text])[0]
    assert plain["labels"] == []
    predictor.at_least_one = True
    filled = predictor.predict([text])[0]
    best = max(plain["probabilities"], key=plain["probabilities"].get)
    assert filled["labels"] == [best]
    argv = ["predict", str(multi_run.run_dir), "--text", text, "--precision", "fp32", "--at-least-one"]
    assert main(argv) == 0 and capsys.readouterr().out.startswith(f"{best} (")
