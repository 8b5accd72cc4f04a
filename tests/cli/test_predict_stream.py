"""`loratune predict --input` of any size: read, scored and written a chunk at a time, the output the same as in
one piece, in input order, and never half-written."""

from __future__ import annotations

import csv
import json

import pytest

from loratune.cli import main
from loratune.cli import texts as text_files

TEXTS = ["a gorgeous, witty, seductive movie", "a waste of two hours", "", "fine", "not my cup of tea"] * 5


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(text_files, "CHUNK_ROWS", 4)  # 25 rows: seven chunks, the last one short


def _predict(run_dir, *args: str) -> int:
    return main(["predict", str(run_dir), "--device", "cpu", *args])


def _read(path):
    if path.suffix == ".csv":
        return list(csv.DictReader(path.open()))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("out_name", ["out.csv", "out.jsonl", "out.parquet"])
def test_chunks_give_the_predictions_of_one_piece_in_input_order(bert_run, tmp_path, small_chunks, out_name):
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows((i, t) for i, t in enumerate(TEXTS))
    whole = bert_run.predictor(device="cpu").predict(TEXTS)
    out = tmp_path / out_name
    assert _predict(bert_run.run_dir, "--input", str(source), "--output", str(out)) == 0
    rows = _read(out)
    assert [str(r["id"]) for r in rows] == [str(i) for i in range(len(TEXTS))]
    assert [r["text"] for r in rows] == TEXTS
    assert [r["predicted_label"] for r in rows] == [p["label"] for p in whole]
    for row, p in zip(rows, whole, strict=True):
        assert float(row["score"]) == pytest.approx(p["score"], abs=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_parquet_in_keeps_its_column_types_in_parquet_out(bert_run, tmp_path, small_chunks):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": pa.array(range(len(TEXTS)), pa.int64()), "text": TEXTS, "stars": [4.5] * len(TEXTS)})
    pq.write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    assert _predict(bert_run.run_dir, "--input", str(tmp_path / "in.parquet"), "--output", str(out)) == 0
    written = pq.read_table(out)
    assert written.schema.field("id").type == pa.int64() and written.schema.field("stars").type == pa.float64()
    assert written.column("id").to_pylist() == list(range(len(TEXTS)))
    assert written.schema.field("score").type == pa.float64()


def test_a_bad_row_near_the_end_stops_before_the_model_loads_and_writes_nothing(bert_run, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": t}) for t in TEXTS] + [json.dumps({"text": None})]
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.csv"
    assert _predict(bert_run.run_dir, "--input", str(source), "--output", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {source}, line {len(TEXTS) + 1}: 'text' is null, not a text; give every row a text."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_failure_midway_leaves_the_earlier_output_whole_and_no_partial_file(
    bert_run, tmp_path, small_chunks, monkeypatch
):
    from loratune.inference.predictor import Predictor

    source = tmp_path / "in.txt"
    source.write_text("\n".join(t or "x" for t in TEXTS) + "\n")
    out = tmp_path / "out.csv"
    out.write_text("text,predicted_label\nearlier,result\n")
    real, calls = Predictor.predict, []

    def fail_on_third_chunk(self, texts, text_pairs=None):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, texts, text_pairs)

    monkeypatch.setattr(Predictor, "predict", fail_on_third_chunk)
    args = ["--input", str(source), "--output", str(out), "--overwrite"]
    assert _predict(bert_run.run_dir, *args) == 130
    assert out.read_text() == "text,predicted_label\nearlier,result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.csv"]


def test_many_rows_show_progress_with_an_eta(bert_run, tmp_path, small_chunks, monkeypatch, capsys):
    from loratune import progress
    from loratune.cli import predicting

    monkeypatch.setattr(predicting, "PREDICT_PROGRESS_ROWS", 10)
    clock = iter(float(t) for t in range(100_000))  # each reading of the clock one second later
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    source = tmp_path / "in.txt"
    source.write_text("\n".join(t or "x" for t in TEXTS) + "\n")
    assert _predict(bert_run.run_dir, "--input", str(source), "--output", str(tmp_path / "out.jsonl")) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("predicting ")]
    assert lines and "texts/s, about" in lines[0] and "s left)" in lines[0]
    assert lines[-1].startswith("predicting 25/25 texts (")
