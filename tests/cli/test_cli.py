"""Tests for loratune.cli: each subcommand end to end on a tiny model, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import PNG_MAGIC, make_rows, write_csv

from loratune import ConfigError, DataError
from loratune.cli import main
from loratune.runs.folder import load_run


def train_args(model, data, out, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--model",
        str(model),
        "--output-dir",
        str(out),
        "--epochs",
        "1",
        "--no-progress",
        "train.device=cpu",
        "train.batch_size=8",
        *extra,
    ]


def assert_one_line_error(capsys, code: int, pattern: str) -> str:
    import re

    captured = capsys.readouterr()
    assert code == 2
    err = captured.err.strip()
    assert "Traceback" not in captured.err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert re.search(pattern, err), err
    return err


@pytest.fixture(autouse=True)
def quiet_datasets():
    # datasets draws progress bars on stderr; hide them so stderr holds only what loratune prints.
    import datasets

    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


@pytest.fixture(scope="module")
def cli_run(tiny_bert, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(train_args(tiny_bert, data_dir, out)) == 0
    return out


def test_train_writes_a_run_and_prints_a_summary(tiny_bert, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_bert, data_dir, out)) == 0
    printed = capsys.readouterr().out
    assert f"run folder: {out}" in printed
    for key in ("accuracy", "precision", "recall", "f1"):
        assert any(line.startswith(key) for line in printed.splitlines()), key
    assert "best epoch 1" in printed
    assert (out / "COMPLETE").exists()
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 1


def test_train_repeats_a_run_from_its_saved_config(cli_run, tmp_path, capsys):
    assert main(["train", "--config", str(cli_run / "config.yaml"), "--output-dir", str(tmp_path / "again")]) == 0
    assert f"run folder: {tmp_path / 'again'}" in capsys.readouterr().out


def test_predict_prints_each_texts_most_likely_label_and_its_probability(cli_run, capsys):

    texts = ["great movie", "awful plot", "the film was really great"]
    argv = ["predict", str(cli_run), "--device", "cpu", "--precision", "fp32"]
    assert main([*argv, *(arg for text in texts for arg in ("--text", text))]) == 0
    lines = capsys.readouterr().out.strip().splitlines()

    predictor = load_run(cli_run).predictor(device="cpu", precision="fp32")
    probabilities = predictor.predict_proba(texts)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(len(texts)))
    assert len(lines) == len(texts)
    for line, text, probs in zip(lines, texts, probabilities, strict=True):
        label, score, printed = line.split("\t")
        assert printed == text
        assert label == predictor.labels[int(probs.argmax())], (text, probs)
        assert float(score) == pytest.approx(float(probs.max()), abs=1e-4), (text, probs)  # printed to 4 places


def test_predict_notes_empty_texts_and_still_labels_every_one(cli_run, capsys):
    assert main(["predict", str(cli_run), "--device", "cpu", "--text", "great movie", "--text", "  "]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip("\n").splitlines()) == 2
    assert "note: 1 of 2 texts are empty" in captured.err


def test_predict_reads_an_input_file_and_writes_an_output_file(cli_run, data_dir, tmp_path, capsys):
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", str(cli_run), "--input", str(data_dir / "test.csv"), "--output", str(out)]) == 0
    assert "wrote 16 predictions" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 16 and all(r["label"] in ("bad", "good") for r in rows)


def test_evaluate_prints_the_scores_of_a_split(cli_run, data_dir, tmp_path, capsys):
    out = tmp_path / "scores.json"
    code = main(["evaluate", str(cli_run), "--data", str(data_dir), "--split", "validation", "--output", str(out)])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("validation: accuracy ") and "(16 texts)" in line
    assert json.loads(out.read_text())["num_samples"] == 16


def test_report_rebuilds_the_pages_and_plots_from_the_run_folder(cli_run, tmp_path, capsys):
    run = Path(shutil.copytree(cli_run, tmp_path / "run"))  # a private copy, free to change
    rebuilt = ["report.md", "report.html", "accuracy.png", "confusion_matrix.png"]
    assert "91.4%" not in (run / "report.md").read_text()
    for name in rebuilt:
        (run / name).unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["after"]["accuracy"] = 0.9137  # a score the trained run did not have, so only a rebuilt page shows it
    (run / "metrics.json").write_text(json.dumps(metrics))
    capsys.readouterr()

    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    for name in rebuilt:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert (run / "accuracy.png").read_bytes()[:8] == PNG_MAGIC
    assert "91.4%" in (run / "report.md").read_text()
    assert "91.4%" in (run / "report.html").read_text()


def test_validate_prints_the_resolved_config(capsys):
    assert main(["validate", "--data", "some/data", "train.learning_rate=3e-4", "--lora-r", "4"]) == 0
    captured = capsys.readouterr()
    assert "learning_rate: 0.0003" in captured.out
    assert "r: 4" in captured.out
    assert "config OK" in captured.err


def test_validate_reads_a_config_file_and_flags_win(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  num_epochs: 7\n  batch_size: 4\n")
    assert main(["validate", "--config", str(path), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "num_epochs: 2" in out and "batch_size: 4" in out


# One-line errors --------------------------------------------------------------------------------------------------


def test_missing_data_path_exits_2(tiny_bert, tmp_path, capsys):
    code = main(train_args(tiny_bert, tmp_path / "nope.csv", tmp_path / "run"))
    assert_one_line_error(capsys, code, r"does not exist; check the path")


def test_empty_data_file_exits_2(tiny_bert, tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    code = main(train_args(tiny_bert, tmp_path / "empty.csv", tmp_path / "run"))
    assert_one_line_error(capsys, code, r"is empty")


def test_missing_column_exits_2(tiny_bert, tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", make_rows(20, seed=1))
    code = main(train_args(tiny_bert, data, tmp_path / "run", "data.text_column=sentence"))
    assert_one_line_error(capsys, code, r"data.text_column='sentence' is not in the train split")


def test_single_class_train_exits_2(tiny_bert, tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", [{"text": r["text"], "label": "good"} for r in make_rows(20, seed=1)])
    code = main(train_args(tiny_bert, data, tmp_path / "run"))
    assert_one_line_error(capsys, code, r"single class")


def test_unknown_label_in_test_exits_2(tiny_bert, tmp_path, capsys):
    write_csv(tmp_path / "data" / "train.csv", make_rows(20, seed=1))
    test = make_rows(10, seed=2)
    test[0]["label"] = "neutral"
    write_csv(tmp_path / "data" / "test.csv", test)
    code = main(train_args(tiny_bert, tmp_path / "data", tmp_path / "run"))
    assert_one_line_error(capsys, code, r"label\(s\) \['neutral'\] that train lacks")


def test_unknown_config_key_exits_2(capsys):
    code = main(["validate", "train.lr=1"])
    assert_one_line_error(capsys, code, r"Unknown key 'train.lr'. Did you mean 'train.learning_rate'\?")


def test_bad_config_value_exits_2(tiny_bert, data_dir, tmp_path, capsys):
    code = main(train_args(tiny_bert, data_dir, tmp_path / "run", "train.learning_rate=fast"))
    assert_one_line_error(capsys, code, r"train.learning_rate='fast' is not a valid float")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--lora.rank", "4"], r"unknown option '--lora.rank' for loratune train; did you mean --lora-r\?"),
        (["predict", "run", "--txt", "hi"], r"unknown option '--txt' for loratune predict; did you mean --text\?"),
        (["train", "--zzzzzz"], r"unknown option '--zzzzzz' for loratune train; `loratune train --help`"),
        (["evaluate"], r"the following arguments are required: run; `loratune evaluate --help` lists"),
        (["predict", "run", "--precision", "fp64"], r"argument --precision: invalid choice: 'fp64'"),
        (["frobnicate"], r"argument command: invalid choice: 'frobnicate'"),
    ],
)
def test_argparse_mistakes_are_one_line_errors_with_the_nearest_option(capsys, argv, expected):
    assert_one_line_error(capsys, main(argv), expected)


def test_help_still_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0 and "--lora-r" in capsys.readouterr().out


def test_override_without_equals_exits_2(capsys):
    assert_one_line_error(capsys, main(["validate", "oops"]), r"Unexpected argument 'oops'")


def test_missing_model_path_exits_2(data_dir, tmp_path, capsys):
    code = main(train_args(tmp_path / "no-model", data_dir, tmp_path / "run"))
    assert_one_line_error(capsys, code, r"Model path .* does not exist")


def test_model_that_is_not_a_classifier_exits_2(tiny_clip, data_dir, tmp_path, capsys):
    code = main(train_args(tiny_clip, data_dir, tmp_path / "run"))
    assert_one_line_error(capsys, code, r"has no sequence-classification class")


@pytest.mark.parametrize("command", ["predict", "evaluate", "report"])
def test_missing_run_folder_exits_2(command, data_dir, tmp_path, capsys):
    extra = {"predict": ["--text", "hi"], "evaluate": ["--data", str(data_dir)], "report": []}[command]
    code = main([command, str(tmp_path / "no-run"), *extra])
    assert_one_line_error(capsys, code, r"(does not exist|is missing|has no metrics.json|not a finished run)")


def test_finished_run_is_not_overwritten_by_the_cli(cli_run, tiny_bert, data_dir, capsys):
    code = main(train_args(tiny_bert, data_dir, cli_run))
    assert_one_line_error(capsys, code, r"already holds a finished run")


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused on CPU only")
def test_predict_in_fp16_on_cpu_exits_2(cli_run, capsys):
    code = main(["predict", str(cli_run), "--text", "hi", "--device", "cpu", "--precision", "fp16"])
    assert_one_line_error(capsys, code, r"fp16 needs a CUDA GPU; on CPU use bf16 or fp32")


def test_predict_without_texts_exits_2(cli_run, capsys):
    assert_one_line_error(capsys, main(["predict", str(cli_run)]), r"Nothing to predict")


def test_debug_reraises_the_error(capsys):
    with pytest.raises(ConfigError, match=r"train.lr"):
        main(["--debug", "validate", "train.lr=1"])


def test_debug_reraises_data_errors(tiny_bert, tmp_path):
    with pytest.raises(DataError):
        main(["--debug", *train_args(tiny_bert, tmp_path / "nope.csv", tmp_path / "run")])


def test_the_hub_clients_retry_warnings_are_hidden_while_loading(caplog):
    # Without a network a hub id is retried five times, two warning lines a try, before the one-line error.
    from huggingface_hub.utils import logging as hub_logging

    from loratune.quiet import quiet_libraries

    retry_log = hub_logging.get_logger("huggingface_hub.utils._http")
    before = hub_logging.get_verbosity()
    with quiet_libraries():
        retry_log.warning("Retrying in 1s [Retry 1/5].")
    assert hub_logging.get_verbosity() == before
    retry_log.warning("Retrying in 2s [Retry 2/5].")  # outside the block the library speaks as it did
    assert [r.getMessage() for r in caplog.records if "Retrying" in r.getMessage()] == ["Retrying in 2s [Retry 2/5]."]


def test_check_data_help_lists_its_own_flags_only(capsys):
    import pytest as _pytest

    with _pytest.raises(SystemExit):
        main(["check-data", "--help"])
    text = capsys.readouterr().out
    assert "--label-column" in text and "--output" in text
    assert "--learning-rate" not in text and "--lora-r" not in text and len(text.splitlines()) < 100


def test_train_names_every_phase_as_it_starts_and_the_whole_time_at_the_end(tmp_path, tiny_bert, data_dir, capsys):
    argv = ["train", "--data", str(data_dir), "--model", str(tiny_bert), "--output-dir", str(tmp_path / "run")]
    assert main([*argv, "--epochs", "1", "--precision", "fp32", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    phases = [
        "loading ",
        "tokenising",
        "scoring the model before training (test split)",
        "epoch 1/1",
        "scoring the trained model (test split)",
        "comparing before and after",
        "writing the run folder",
    ]
    lines = err.splitlines()
    found = [next(i for i, line in enumerate(lines) if line.startswith(p)) for p in phases]
    assert found == sorted(found)  # each named, in the order they run
    assert "the whole command took" in out
