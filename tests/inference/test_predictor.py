"""Tests for loratune.inference.predictor: labels and probabilities from a run folder, file input and output."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import write_csv, write_jsonl

from loratune import DataError, Predictor, RunError
from loratune.cli.prediction_files import write_predictions
from loratune.cli.texts import read_texts
from loratune.model import hardware
from loratune.runs.folder import load_run

TEXTS = ["great movie", "the plot was really awful", "a very great scene with music"]


@pytest.fixture(scope="module")
def predictor(bert_run):
    return load_run(bert_run.run_dir).predictor(device="cpu", precision="fp32")


def test_predict_returns_label_names_and_probabilities_summing_to_one(predictor):
    predictions = predictor.predict(TEXTS)
    assert len(predictions) == len(TEXTS)
    for p in predictions:
        assert p["label"] in ("bad", "good")
        assert set(p["probabilities"]) == {"bad", "good"}
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["score"] == max(p["probabilities"].values())
        assert p["probabilities"][p["label"]] == p["score"]


def test_predict_accepts_a_single_string(predictor):
    assert predictor.predict("great movie") == predictor.predict(["great movie"])


def test_predictions_keep_the_input_order(predictor):
    together = predictor.predict_proba(TEXTS)
    alone = torch.cat([predictor.predict_proba([t]) for t in TEXTS])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_batch_size_does_not_change_predictions(predictor, bert_run):
    small = Predictor(predictor.model, load_run(bert_run.run_dir), batch_size=1)
    torch.testing.assert_close(small.predict_proba(TEXTS), predictor.predict_proba(TEXTS), atol=1e-5, rtol=1e-4)


def test_mismatched_text_pairs_are_rejected(predictor):
    with pytest.raises(DataError, match=r"Got 3 texts but 1 text pairs"):
        predictor.predict(TEXTS, ["one"])


def test_from_run_rejects_a_missing_folder(tmp_path):
    with pytest.raises(RunError, match=r"does not exist"):
        load_run(tmp_path / "nope").predictor()


@pytest.mark.parametrize("name", ["in.csv", "in.jsonl", "in.txt"])
def test_texts_are_read_from_csv_jsonl_and_txt(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".csv"):
        write_csv(path, [{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    elif name.endswith(".jsonl"):
        write_jsonl(path, [{"text": t, "id": i} for i, t in enumerate(TEXTS)])
    else:
        path.write_text("\n".join(TEXTS) + "\n\n")
    assert read_texts(path) == TEXTS


def test_text_column_is_chosen_by_name(tmp_path):
    path = write_csv(tmp_path / "in.csv", [{"id": i, "review": t} for i, t in enumerate(TEXTS)])
    assert read_texts(path, "review") == TEXTS
    with pytest.raises(DataError, match=r"has no text column 'text'; its columns are \['id', 'review'\]"):
        read_texts(path)


def test_missing_input_file_is_reported(tmp_path):
    with pytest.raises(DataError, match=r"does not exist"):
        read_texts(tmp_path / "nope.csv")


def test_predictions_are_written_as_csv(predictor, tmp_path):
    write_predictions(tmp_path / "out.csv", TEXTS, predictor.predict(TEXTS))
    with (tmp_path / "out.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["text"] for r in rows] == TEXTS
    assert list(rows[0]) == ["text", "predicted_label", "score", "prob_bad", "prob_good"]
    assert all(float(r["prob_bad"]) + float(r["prob_good"]) == pytest.approx(1.0, abs=1e-5) for r in rows)


def test_predictions_are_written_as_jsonl(predictor, tmp_path):
    predictions = predictor.predict(TEXTS)
    write_predictions(tmp_path / "out.jsonl", TEXTS, predictions)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["predicted_label"] for r in rows] == [p["label"] for p in predictions]
    assert [r["text"] for r in rows] == TEXTS


def test_predict_keeps_every_input_column_and_adds_its_own_beside_them(bert_run, tmp_path):
    """A labelled file keeps its gold `label`: predictions go beside it, and nothing of the input is replaced."""
    from loratune.cli import main

    source = tmp_path / "in.csv"
    source.write_text("id,text,label,score\n7,great movie,good,x\n8,awful plot,bad,y\n")
    for name in ("out.csv", "out.jsonl"):
        out = tmp_path / name
        argv = ["predict", str(bert_run.run_dir), "--input", str(source), "--output", str(out), "--device", "cpu"]
        assert main(argv) == 0
        if name.endswith(".csv"):
            rows = list(csv.DictReader(out.open()))
        else:
            rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert list(rows[0])[:6] == ["id", "text", "label", "score", "predicted_label", "score_"]
        assert [(r["id"], r["label"], r["score"]) for r in rows] == [("7", "good", "x"), ("8", "bad", "y")]
        assert all(r["predicted_label"] in ("bad", "good") for r in rows)


def test_unknown_output_format_is_rejected(predictor, tmp_path):
    with pytest.raises(DataError, match=r"use an output file ending in .csv, .jsonl or .parquet"):
        write_predictions(tmp_path / "out.xlsx", TEXTS, predictor.predict(TEXTS))


def test_bf16_predictor_holds_a_merged_bf16_model_with_nearly_the_fp32_scores(bert_run, predictor):
    fast = load_run(bert_run.run_dir).predictor(device="cpu", precision="bf16")
    assert {p.dtype for p in fast.model.parameters()} == {torch.bfloat16}
    assert not any("lora_" in name for name, _ in fast.model.named_parameters())  # merged into the weights
    torch.testing.assert_close(fast.predict_proba(TEXTS), predictor.predict_proba(TEXTS), atol=0.03, rtol=0)


def test_auto_precision_is_fp32_on_a_cpu_without_fast_bf16(bert_run, monkeypatch):

    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    model = load_run(bert_run.run_dir).predictor(device="cpu").model
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_a_csv_row_wider_than_its_header_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,text\n1,great movie\n2,a gorgeous, witty, seductive movie\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"in\.csv, line 3: 4 fields but the header has 2"):
        read_texts(path)


def test_an_unquoted_comma_in_a_one_column_csv_stays_in_the_text(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('text\na gorgeous, witty, seductive movie\n"quoted, kept"\nplain\n', encoding="utf-8")
    assert read_texts(path) == ["a gorgeous, witty, seductive movie", "quoted, kept", "plain"]
