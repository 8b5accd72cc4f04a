"""Tests for training.recipe.run: the run folder it writes, reloading it, and refusing to clobber a finished run.

Each architecture gets one 2-epoch LoRA run on the tiny dataset, shared by the tests of this module.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_rows, tiny_config, write_csv

import loratune
from loratune import ModelError, RunError
from loratune.runs import files
from loratune.runs.files import HISTORY_COLUMNS
from loratune.runs.folder import load_run
from loratune.schema import RunSummary
from loratune.training.recipe import run

ARCHITECTURES = ["bert", "distilbert", "gpt2", "llama"]
RUN_FILES = [
    "config.yaml",
    "labels.json",
    "metrics.json",
    "history.csv",
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
    "tokenizer/tokenizer_config.json",
    "accuracy.png",
    "loss.png",
    "confusion_matrix.png",
    "report.md",
    "report.html",
    "COMPLETE",
]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch_run(request, tiny_models, data_dir, tmp_path_factory):
    arch = request.param
    cfg = tiny_config(tiny_models[arch], data_dir, tmp_path_factory.mktemp("runs") / arch)
    return arch, run(cfg)


def eval_batch(tokenizer, texts=("great movie", "the plot was awful", "a very very really great scene", "awful")):
    return tokenizer(list(texts), padding=True, return_tensors="pt")


def test_run_folder_has_every_documented_file(arch_run):
    _, result = arch_run
    for name in RUN_FILES:
        assert (result.run_dir / name).is_file(), name
    assert any((result.run_dir / "tokenizer").iterdir())


def test_metrics_json_holds_every_schema_key_and_reads_back_as_the_run_summary(arch_run):
    _, result = arch_run
    raw = json.loads((result.run_dir / "metrics.json").read_text())
    assert set(raw) == {f.name for f in dataclasses.fields(RunSummary)}
    assert RunSummary.from_dict(raw) == result.summary
    summary = result.summary
    assert summary.labels == ["bad", "good"]
    assert summary.eval_split == "test"
    assert summary.method == "lora"
    assert summary.best_metric == "val_f1"
    assert summary.before.num_samples == summary.after.num_samples == 16
    assert summary.before.loss is not None and summary.after.loss is not None
    assert summary.data.train_size == 40
    assert summary.data.label_counts["train"] == {"bad": 20, "good": 20}
    assert summary.data.truncated == {"train": 0, "validation": 0, "test": 0}
    assert [e.epoch for e in summary.history] == [1, 2]
    assert summary.best_epoch in (1, 2)
    assert 0 < summary.trainable_params_lora < summary.trainable_params < summary.total_params
    assert summary.adapter_size_bytes > 0
    assert summary.throughput.train_samples_per_s > 0 and summary.throughput.padding_ratio >= 1
    assert summary.device == "cpu" and summary.precision == "fp32"


def test_history_csv_has_one_row_per_epoch(arch_run):
    _, result = arch_run
    with (result.run_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(HISTORY_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[0]["val_loss"]) == pytest.approx(result.summary.history[0].val_loss, rel=1e-4)


def test_labels_json_lists_labels_in_id_order(arch_run):
    _, result = arch_run
    assert json.loads((result.run_dir / "labels.json").read_text()) == ["bad", "good"]


def test_saved_config_repeats_the_run(arch_run):
    _, result = arch_run
    saved = loratune.load_config(result.run_dir / "config.yaml")
    assert saved == result.config
    assert saved.train.output_dir == str(result.run_dir)
    assert saved.lora.target_modules  # resolved, so the run is reproducible from the folder alone


def test_reloaded_run_scores_the_eval_split_exactly_as_the_trained_model(arch_run, data_dir):
    from loratune.config import DataArgs
    from loratune.data.batches import build_eval_loader, tokenize
    from loratune.data.splits import load_eval_split
    from loratune.scoring.inference import evaluate

    _, result = arch_run
    reopened = load_run(result.run_dir)
    model, tokenizer, labels, cfg = reopened.trained_model(), reopened.tokenizer, reopened.labels, reopened.config
    ds, _ = tokenize(load_eval_split(DataArgs(path=str(data_dir)), "test", labels), tokenizer, cfg.data.max_length)
    metrics = evaluate(model, build_eval_loader(ds, 8, tokenizer.pad_token_id), labels, reopened.task)
    assert metrics.confusion_matrix == result.after.confusion_matrix
    assert metrics.loss == pytest.approx(result.after.loss, abs=1e-5)


def test_peft_from_pretrained_matches_loratune_loading(arch_run):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    arch, result = arch_run
    reopened = load_run(result.run_dir)
    model, tokenizer, labels, cfg = reopened.trained_model(), reopened.tokenizer, reopened.labels, reopened.config
    base = AutoModelForSequenceClassification.from_pretrained(cfg.model.name_or_path, num_labels=len(labels))
    base.config.pad_token_id = tokenizer.pad_token_id  # GPT-2 and Llama ship none
    peft_model = PeftModel.from_pretrained(base, result.run_dir / "adapter").eval()
    batch = eval_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, model(**batch).logits)


def test_predictor_gives_the_same_probabilities_as_the_reloaded_model(arch_run):
    _, result = arch_run
    reopened = load_run(result.run_dir)
    model, tokenizer = reopened.trained_model(), reopened.tokenizer
    texts = ["great movie", "the plot was awful", "a very very really great scene"]
    temperature = reopened.temperature  # predict gives the calibrated probabilities
    with torch.no_grad():
        expected = torch.softmax(model(**eval_batch(tokenizer, texts)).logits / temperature, -1)
    predicted = loratune.load_run(result.run_dir).predictor(device="cpu", precision="fp32").predict_proba(texts)
    torch.testing.assert_close(predicted, expected, atol=1e-5, rtol=1e-4)


def test_load_run_reads_a_finished_folder(bert_run):
    loaded = load_run(bert_run.run_dir)
    assert loaded.summary == bert_run.summary
    assert loaded.config == bert_run.config
    assert loaded.predict(["great movie"])[0]["label"] in ("bad", "good")


def test_load_run_rejects_a_missing_folder(tmp_path):
    with pytest.raises(RunError, match=r"does not exist"):
        load_run(tmp_path / "nope")


def test_load_run_rejects_an_unfinished_folder(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(RunError, match=r"not a finished run \(no COMPLETE marker\)"):
        load_run(tmp_path)


def test_finished_run_is_not_overwritten(bert_run, tiny_bert, data_dir):
    metrics_file = bert_run.run_dir / "metrics.json"
    before = metrics_file.read_bytes()
    with pytest.raises(RunError, match=r"already holds a finished run; .*--overwrite"):
        run(tiny_config(tiny_bert, data_dir, bert_run.run_dir))
    assert metrics_file.read_bytes() == before
    assert (bert_run.run_dir / "COMPLETE").exists()


def test_finished_run_is_replaced_with_overwrite(tmp_path, tiny_bert, data_dir):
    first = run(tiny_config(tiny_bert, data_dir, tmp_path / "run", train__num_epochs=1))
    second = run(tiny_config(tiny_bert, data_dir, tmp_path / "run", train__num_epochs=2, train__overwrite=True))
    assert second.run_dir == first.run_dir
    assert len(json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]) == 2
    assert (tmp_path / "run" / "COMPLETE").exists()


def test_failing_run_leaves_no_complete_marker(tmp_path, tiny_bert, data_dir):
    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "run", lora__target_modules="nonexistent")
    with pytest.raises(ModelError):
        run(cfg)
    assert not (tmp_path / "run" / "COMPLETE").exists()


def test_failing_overwrite_leaves_the_earlier_run_whole(tmp_path, tiny_bert, data_dir):
    run(tiny_config(tiny_bert, data_dir, tmp_path / "run", train__num_epochs=1))
    metrics = (tmp_path / "run" / "metrics.json").read_bytes()
    bad = tiny_config(tiny_bert, data_dir, tmp_path / "run", train__overwrite=True, lora__target_modules="nonexistent")
    with pytest.raises(ModelError):
        run(bad)
    assert (tmp_path / "run" / "metrics.json").read_bytes() == metrics
    assert load_run(tmp_path / "run").summary.history[-1].epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the folder it was building is gone


def test_crash_during_training_leaves_no_complete_marker_but_keeps_the_before_scores(
    tmp_path, tiny_bert, data_dir, monkeypatch
):
    import loratune.training.recipe

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(loratune.training.recipe, "train", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_config(tiny_bert, data_dir, tmp_path / "run"))
    assert (tmp_path / "run").is_dir()
    assert not (tmp_path / "run" / "COMPLETE").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()
    # the "before" scores are on disk already, so that --resume does not measure them again
    before = json.loads((tmp_path / "run" / "before.json").read_text())
    assert before["num_samples"] == 16
    with pytest.raises(RunError, match=r"not a finished run"):
        load_run(tmp_path / "run")


def test_a_model_that_changes_when_saved_and_reloaded_is_reported(tmp_path, tiny_bert, data_dir, monkeypatch, caplog):
    from loratune.runs.folder import RunFolder

    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "kept", lora__method="full", train__learning_rate=1e-3)
    with caplog.at_level("WARNING", logger="loratune.training.after"):
        run(cfg)
    assert "saved and reloaded" not in caplog.text  # the model training kept is the one saved
    loaded = RunFolder.trained_model

    def lose_the_head(self, *args, **kwargs):  # a reload that misses a part, as mean pooling once went missing
        model = loaded(self, *args, **kwargs)
        with torch.no_grad():
            model.classifier.bias.copy_(torch.tensor([4.0, -4.0]))
        return model

    monkeypatch.setattr(RunFolder, "trained_model", lose_the_head)
    with caplog.at_level("WARNING", logger="loratune.training.after"):
        run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=str(tmp_path / "lost"))))
    assert re.search(r"The saved model scores validation loss \d\.\d+, but training scored \d\.\d+", caplog.text)


def test_bad_data_fails_before_a_run_folder_is_made(tmp_path, tiny_bert):
    write_csv(tmp_path / "data" / "train.csv", [{"text": r["text"], "label": "good"} for r in make_rows(20, seed=1)])
    with pytest.raises(loratune.DataError, match=r"single class"):
        run(tiny_config(tiny_bert, tmp_path / "data", tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_method_none_evaluates_without_training(tmp_path, tiny_bert, data_dir):
    result = run(tiny_config(tiny_bert, data_dir, tmp_path / "run", lora__method="none"))
    assert result.summary.history == [] and not result.summary.trained
    assert result.after == result.before
    assert (tmp_path / "run" / "COMPLETE").exists()


def test_loratune_run_is_the_recipe_run_even_after_a_run(bert_run):
    # `loratune.run` is loaded lazily; importing the recipe and the loop modules must not shadow it.
    assert loratune.run is run and loratune.load_run is load_run


@pytest.mark.parametrize("method", ["dora", "ia3"])
def test_other_peft_methods_train_save_and_reload(tmp_path, tiny_bert, data_dir, method):
    result = run(tiny_config(tiny_bert, data_dir, tmp_path / method, lora__method=method, train__num_epochs=1))
    adapter = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == {"dora": "LORA", "ia3": "IA3"}[method]
    assert adapter.get("use_dora", False) == (method == "dora")
    reopened = load_run(result.run_dir)
    reopened.trained_model()
    labels, cfg = reopened.labels, reopened.config
    assert cfg.lora.method == method and labels == result.summary.labels
    again = run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=str(tmp_path / "again"))))
    assert again.after.accuracy == pytest.approx(result.after.accuracy)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda run_dir: (run_dir / "metrics.json").write_text('{"method": "lora", "labels": ["a'),
            r"metrics.json is damaged",
        ),
        (lambda run_dir: (run_dir / "metrics.json").write_text('{"method": "lora"}'), r"key 'labels' is missing"),
        (lambda run_dir: (run_dir / "config.yaml").unlink(), r"config.yaml is missing"),
    ],
)
def test_load_run_names_the_damaged_file_in_one_line(bert_run, tmp_path, damage, message):
    import shutil

    copy = Path(shutil.copytree(bert_run.run_dir, tmp_path / "copy"))
    damage(copy)
    with pytest.raises(RunError, match=message) as caught:
        load_run(copy)
    assert "\n" not in str(caught.value)


def test_predict_on_a_run_whose_labels_json_is_not_json_prints_one_line_and_exits_2(bert_run, tmp_path, capsys):
    import shutil

    from loratune.cli import main

    copy = Path(shutil.copytree(bert_run.run_dir, tmp_path / "copy"))
    (copy / "labels.json").write_text("bad, good")
    assert main(["predict", str(copy), "--text", "great movie"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "labels.json is damaged" in err


def test_only_runs_files_names_the_run_folder_files():
    """The layout has one owner: other modules name its files through the `runs.files` constants."""
    src = Path(loratune.__file__).parent
    pattern = re.compile(
        r"\b(metrics\.json|history\.csv|labels\.json|config\.yaml|before\.json|predictions\.parquet"
        r"|calibration\.json|data_checks\.json)"  # \b: a study's best_config.yaml is not the run's config.yaml
    )
    owner = src / "runs" / "files.py"
    offenders = [p.name for p in src.rglob("*.py") if p != owner and pattern.search(p.read_text())]
    assert offenders == []


def test_the_docs_list_every_metrics_key_of_the_schema():
    doc = (REPO / "docs" / "run-folder.md").read_text()
    section = doc[doc.index("## metrics.json") :]
    documented = re.findall(r"^\| `(\w+)` \|", section.split("\n## ")[0], flags=re.MULTILINE)
    assert documented == [f.name for f in dataclasses.fields(RunSummary)]


def test_the_api_hands_out_what_training_changed(bert_run):
    import loratune

    reopened = loratune.load_run(bert_run.run_dir)
    table = reopened.changes()
    c = reopened.summary.changes
    assert table["change"].value_counts().to_dict() == {k: v for k, v in dataclasses.asdict(c).items() if v}
    wrong = reopened.changes("still_wrong")
    assert len(wrong) == c.still_wrong and set(wrong["change"]) <= {"still_wrong"}
    assert list(wrong["prob_after"]) == sorted(wrong["prob_after"], reverse=True)
    with pytest.raises(ValueError, match="kind must be one of"):
        reopened.changes("improved")


def test_a_run_keeps_its_predictions_and_the_changes_add_up_to_its_scores(bert_run):

    s, table = bert_run.summary, files.load_predictions(bert_run.run_dir)
    assert len(table) == s.after.num_samples == s.data.test_size
    c = s.changes
    assert c.fixed + c.broken + c.still_wrong + c.still_right == len(table)
    assert (c.still_right + c.broken) / len(table) == pytest.approx(s.before.accuracy)
    assert (c.still_right + c.fixed) / len(table) == pytest.approx(s.after.accuracy)
    assert (table["pred_after"] == table["label"]).mean() == pytest.approx(s.after.accuracy)
    assert s.calibration.temperature == load_run(bert_run.run_dir).temperature > 0
    sig = s.significance
    assert sig.accuracy_after[0] <= s.after.accuracy <= sig.accuracy_after[1]
    assert 0 <= sig.mcnemar_p <= 1
    report = (bert_run.run_dir / "report.md").read_text()
    for heading in ("## What changed", "## Confidence", "## Significance", "## Data checks"):
        assert heading in report
    assert f"fixed {c.fixed:,} (wrong before" in report
