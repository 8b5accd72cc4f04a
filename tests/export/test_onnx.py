"""Tests for loratune.export.onnx_export and .onnx_folder: a run exported as an ONNX graph (fp32, int8), checked
on the run's own splits, predicting as `loratune predict` does, and loadable with onnxruntime and tokenizers alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROBE_TEXTS as TEXTS

from loratune.cli import main
from loratune.export import onnx_export
from loratune.export.onnx_export import export_onnx
from loratune.export.onnx_folder import OnnxExport
from loratune.runs.folder import load_run

pytest.importorskip("onnxruntime", reason="the onnx extra (CI installs it)")

ARCHITECTURES = ["bert", "distilbert", "gpt2", "llama"]
MORE_TEXTS = TEXTS + ["an awful film", "great great music", "the actor", "", "a really awful plot " * 3]


@pytest.fixture
def lora_run(request, trained_run, tiny_models, data_dir) -> Path:
    return trained_run(tiny_models[request.param], data_dir)


def torch_probabilities(run_dir: Path, texts: list[str]) -> np.ndarray:
    """`loratune predict --precision fp32`'s probabilities."""
    return load_run(run_dir).predictor(device="cpu", precision="fp32").predict_proba(texts).numpy()


@pytest.mark.parametrize("lora_run", ARCHITECTURES, indirect=True)
def test_the_fp32_graph_predicts_what_pytorch_predicts(lora_run, tmp_path):
    record = export_onnx(lora_run, tmp_path / "onnx")
    assert record["default_precision"] == "fp32" and list(record["files"]) == ["model.onnx"]
    for split in ("validation", "test"):
        checks = record["checks"][split]
        assert checks["onnx_fp32"]["agreement"] == 1.0 and checks["onnx_fp32"]["max_logit_diff"] < 1e-4
        assert checks["onnx_fp32"]["accuracy"] == checks["pytorch_fp32"]["accuracy"]
    got = OnnxExport.open(tmp_path / "onnx").predictor().predict_proba(MORE_TEXTS).numpy()
    np.testing.assert_allclose(got, torch_probabilities(lora_run, MORE_TEXTS), atol=1e-5, rtol=0)


def test_int8_is_the_default_when_it_loses_little_and_the_fp32_graph_stays_beside_it(lora_runs, tmp_path):
    record = export_onnx(lora_runs[0], tmp_path / "onnx", quantize="int8")
    assert record["int8_problem"] is None and record["default_precision"] == "int8"
    assert set(record["files"]) == {"model.onnx", "model_fp32.onnx"}
    assert record["files"]["model.onnx"]["precision"] == "int8"
    int8, fp32 = (tmp_path / "onnx" / name for name in ("model.onnx", "model_fp32.onnx"))
    assert int8.stat().st_size < fp32.stat().st_size
    for split in ("validation", "test"):
        checks = record["checks"][split]
        assert 0 < checks["onnx_int8"]["max_logit_diff"] < 1.0
    export = OnnxExport.open(tmp_path / "onnx")
    probs = export.predictor().predict_proba(MORE_TEXTS).numpy()
    np.testing.assert_allclose(probs, torch_probabilities(lora_runs[0], MORE_TEXTS), atol=0.05, rtol=0)
    exact = export.predictor("model_fp32.onnx").predict_proba(MORE_TEXTS).numpy()
    np.testing.assert_allclose(exact, torch_probabilities(lora_runs[0], MORE_TEXTS), atol=1e-5, rtol=0)


def test_an_int8_graph_that_loses_too_much_is_not_the_default_unless_forced(lora_runs, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "INT8_TOLERANCE", -1.0)  # any int8 score now counts as a loss
    record = export_onnx(lora_runs[0], tmp_path / "kept", quantize="int8")
    assert record["int8_problem"] and record["default_precision"] == "fp32" and not record["forced"]
    assert list(record["files"]) == ["model.onnx"]
    assert "onnx_int8" in record["checks"]["test"]  # its scores are kept, for the record
    forced = export_onnx(lora_runs[0], tmp_path / "forced", quantize="int8", force=True)
    assert forced["default_precision"] == "int8" and forced["forced"]


def test_a_multi_label_run_keeps_its_thresholds_and_labels_as_predict_gives_them(multi_label_run, tmp_path):
    record = export_onnx(multi_label_run, tmp_path / "onnx")
    run = load_run(multi_label_run)
    assert record["thresholds"] == run.thresholds and record["task"] == "multi"
    texts = ["alpha", "beta gamma", "nothing here", "alpha beta gamma"]
    expected = run.predictor(device="cpu", precision="fp32").predict(texts)
    got = OnnxExport.open(tmp_path / "onnx").predictor().predict(texts)
    assert [p["labels"] for p in got] == [p["labels"] for p in expected]


def test_a_mean_pooling_run_exports_to_onnx_though_not_to_transformers(trained_run, tiny_bert, data_dir, tmp_path):
    run = trained_run(tiny_bert, data_dir, model__pooling="mean")
    export_onnx(run, tmp_path / "onnx")
    got = OnnxExport.open(tmp_path / "onnx").predictor().predict_proba(MORE_TEXTS).numpy()
    np.testing.assert_allclose(got, torch_probabilities(run, MORE_TEXTS), atol=1e-5, rtol=0)


def test_the_readme_lines_predict_without_loratune(lora_runs, multi_label_run, tmp_path):
    """The README's Python block, run as written with onnxruntime and tokenizers alone, gives predict's labels."""
    for run, texts, key in (
        (lora_runs[0], MORE_TEXTS, "label"),
        (multi_label_run, ["alpha", "beta gamma", "nothing", "gamma alpha"], "labels"),
    ):
        folder = tmp_path / key
        export_onnx(run, folder)
        code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
        code = code.replace('["some text", "another text"]', json.dumps(texts))
        code += "\nimport sys\nassert not any(m.startswith(('loratune', 'torch')) for m in sys.modules)\n"
        code += "print(json.dumps(labels))\n"
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": ""},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        expected = [p[key] for p in load_run(run).predictor(device="cpu", precision="fp32").predict(texts)]
        assert json.loads(done.stdout) == expected


def test_cli_predict_runs_an_export_on_onnx_runtime_with_predicts_answers(lora_runs, tmp_path, capsys):
    folder = tmp_path / "onnx"
    assert main(["export", str(lora_runs[0]), "--format", "onnx", "--output-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "validation accuracy: pytorch fp32" in out and "exported" in out
    args = [arg for t in TEXTS for arg in ("--text", t)]
    assert main(["predict", str(lora_runs[0]), "--precision", "fp32", *args]) == 0
    by_torch = capsys.readouterr().out
    assert main(["predict", str(folder), *args]) == 0  # auto: an ONNX export runs on ONNX Runtime
    assert capsys.readouterr().out == by_torch
    assert main(["predict", str(folder), "--backend", "onnx", *args]) == 0
    assert capsys.readouterr().out == by_torch


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "{run}", "--backend", "onnx", "--text", "x"], "is not an ONNX export"),
        (["predict", "{onnx}", "--backend", "torch", "--text", "x"], "is an ONNX export"),
        (["predict", "{onnx}", "--precision", "bf16", "--text", "x"], "ONNX export runs as exported"),
        (["export", "{run}", "--format", "tflite", "--output-dir", "{new}"], "invalid choice: 'tflite'"),
        (["export", "{run}", "--quantize", "int8", "--output-dir", "{new}"], "add --format onnx"),
        (["export", "{run}", "--format", "onnx", "--adapter-only", "--output-dir", "{new}"], "exclude each other"),
        (["export", "{run}", "--format", "onnx", "--output-dir", "{onnx}"], "--overwrite"),
    ],
)
def test_cli_mistakes_get_one_line_and_exit_2(lora_runs, tmp_path, capsys, argv, message):
    onnx = tmp_path / "onnx"
    export_onnx(lora_runs[0], onnx)
    capsys.readouterr()  # the export's own progress
    before = sorted(p.name for p in onnx.iterdir())
    values = {"run": str(lora_runs[0]), "onnx": str(onnx), "new": str(tmp_path / "new")}
    assert main([a.format(**values) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "new").exists() and sorted(p.name for p in onnx.iterdir()) == before


def test_a_damaged_run_folder_leaves_nothing_written(trained_run, tiny_bert, data_dir, tmp_path, capsys):
    """(A read-only output folder: tests/cli/test_hostile.py, as for every writing command.)"""
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(trained_run(tiny_bert, data_dir, train__seed=3), damaged)
    weights = next((damaged / "adapter").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    capsys.readouterr()  # what training the run printed
    assert main(["export", str(damaged), "--format", "onnx", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "checksum" in err and "\n" not in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_a_changed_graph_is_refused_by_its_checksum(lora_runs, tmp_path, capsys):
    folder = tmp_path / "onnx"
    export_onnx(lora_runs[0], folder)
    graph = folder / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-4] + b"\0\0\0\0")
    assert main(["predict", str(folder), "--text", "great movie"]) == 2
    assert "has changed since it was exported" in capsys.readouterr().err


def test_without_the_extra_export_names_it_in_one_line(lora_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert main(["export", str(lora_runs[0]), "--format", "onnx", "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'loratune[onnx]'" in err and not (tmp_path / "o").exists()
