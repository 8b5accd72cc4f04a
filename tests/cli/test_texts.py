"""The files `loratune predict` reads (loratune.cli.texts): what is not text, or not readable, is one line naming
the file, the line and the fix, before any model loads; nothing is labelled that the user did not write as text."""

from __future__ import annotations

import json

import pytest

from loratune.cli import main
from loratune.cli.texts import read_texts
from loratune.errors import DataError


@pytest.mark.parametrize(
    ("value", "kind"),
    [(None, "null"), (12345, "a int"), (["a", "b"], "a list"), ({"t": 1}, "a dict")],
)
def test_a_jsonl_text_that_is_not_a_string_names_its_line(tmp_path, value, kind):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": value}) + "\n")
    with pytest.raises(DataError, match=rf"in\.jsonl, line 2: 'text' is {kind}.*, not a text"):
        read_texts(path)


def test_a_broken_jsonl_line_names_its_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": "cut off\n')
    with pytest.raises(DataError, match=r"in\.jsonl, line 3: not JSON \(.*\); each line holds one object"):
        read_texts(path)
    path.write_text('{"text": "fine"}\n["a list"]\n')
    with pytest.raises(DataError, match=r"line 2 is not a JSON object"):
        read_texts(path)


def test_a_jsonl_row_without_the_text_names_its_line_and_keys(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "fine"}\n{"review": "elsewhere"}\n')
    with pytest.raises(DataError, match=r"line 2 has no 'text'; its keys are \['review'\]"):
        read_texts(path)


@pytest.mark.parametrize("name", ["in.csv", "in.jsonl", "in.txt"])
def test_bytes_that_are_not_utf8_name_their_line(tmp_path, name):
    path = tmp_path / name
    rows = {"in.csv": b"text\nfine\ncaf\xe9 au lait\n", "in.jsonl": b'{"text": "ok"}\n{"text": "caf\xe9"}\n'}
    path.write_bytes(rows.get(name, b"fine\ncaf\xe9\n"))
    line = 3 if name == "in.csv" else 2
    with pytest.raises(DataError, match=rf"{name}, line {line}: byte 0xe9 is not UTF-8 text; save the file as UTF-8"):
        read_texts(path)


def test_a_csv_row_shorter_than_its_header_names_its_line(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,text\n1,fine\n2\n")
    with pytest.raises(DataError, match=r"in\.csv, line 3: 'text' is null, not a text"):
        read_texts(path)


def test_predict_refuses_such_input_in_one_line_before_the_model_loads(tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": null}\n')
    # the run folder does not even exist: the input is read, and refused, first
    assert main(["predict", str(tmp_path / "no-run"), "--input", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "in.jsonl, line 1: 'text' is null" in err


def test_an_output_that_is_a_folder_is_refused_before_scoring(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert main(["predict", str(tmp_path / "no-run"), "--text", "fine", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and f"--output {tmp_path / 'out'} is a folder; name a file in it instead" in err


def test_one_50_mb_line_is_cut_before_tokenising_and_predicted(bert_run, tmp_path):
    """A fast tokenizer splits a whole text before truncating it: a 50 MB line once took 5.9 GB and aborted."""
    import os
    import subprocess
    import sys

    huge = tmp_path / "huge.txt"
    huge.write_text(("great movie " * 4_400_000)[:50_000_000] + "\nawful plot\n")
    cmd = [sys.executable, "-m", "loratune", "predict", str(bert_run.run_dir), "--input", str(huge), "--device", "cpu"]
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as stdout, err.open("w") as stderr:
        child = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=os.environ | {"HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak memory
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, err.read_text()[-2000:]
    assert len(out.read_text().splitlines()) == 2 and "note: 1 of 2 texts were longer than" in err.read_text()
    assert usage.ru_maxrss < 2 * 2**20  # KB: the 50 MB text, the model and torch; not GBs of tokens


def test_bounded_texts_cut_only_what_is_longer_than_the_bound():
    from loratune.data.batches import CHARS_PER_TOKEN, bounded_texts

    texts, cut = bounded_texts(["short", "x" * (CHARS_PER_TOKEN * 8 + 1), None], max_length=8)
    assert texts == ["short", "x" * (CHARS_PER_TOKEN * 8), None] and cut == [False, True, False]
