"""Tests for loratune.export.plain: a run written as a plain transformers model (LoRA merged) or as its PEFT adapter,
loading without loratune and giving the probabilities `loratune predict` gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROBE_TEXTS as TEXTS
from conftest import pipeline_probabilities

import loratune
from loratune import RunError
from loratune.cli import main
from loratune.export.plain import export_run
from loratune.runs.folder import load_run

ARCHITECTURES = ["bert", "distilbert", "gpt2", "llama"]


@pytest.fixture
def lora_run(request, trained_run, tiny_models, data_dir) -> Path:
    return trained_run(tiny_models[request.param], data_dir)


def adapter_probabilities(folder: Path, base: str, texts: list[str]) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = json.loads((folder / "labels.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(labels))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(model, folder).eval()
    temperature = json.loads((folder / "calibration.json").read_text())["temperature"]  # as the README says
    with torch.inference_mode():
        probs = []
        for text in texts:  # one at a time: no padding, as the pipeline does
            batch = tokenizer(text, truncation=True, return_tensors="pt")
            probs.append(torch.softmax(model(**batch).logits.float() / temperature, dim=-1)[0])
    return torch.stack(probs)


@pytest.mark.parametrize("lora_run", ARCHITECTURES, indirect=True)
def test_merged_export_gives_the_probabilities_of_predict(lora_run, tmp_path):
    out = export_run(lora_run, tmp_path / "merged")
    predictor = load_run(lora_run).predictor(device="cpu", precision="fp32")
    expected = predictor.predict_proba(TEXTS)
    got = pipeline_probabilities(out, predictor.labels, TEXTS)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "bad", "1": "good"}
    assert config["label2id"] == {"bad": 0, "good": 1}
    assert config["pad_token_id"] == predictor.tokenizer.pad_token_id
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and "adapter_config.json" not in files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"F32"}
        assert not any("lora_" in k or "modules_to_save" in k for k in weights.keys())


@pytest.mark.parametrize("lora_run", ARCHITECTURES, indirect=True)
def test_adapter_export_gives_the_probabilities_of_predict(lora_run, tmp_path):
    out = export_run(lora_run, tmp_path / "adapter", adapter_only=True)
    assert {"adapter_config.json", "adapter_model.safetensors", "labels.json", "README.md"} <= set(os.listdir(out))
    predictor = load_run(lora_run).predictor(device="cpu", precision="fp32")
    base = loratune.load_run(lora_run).config.model.name_or_path
    got = adapter_probabilities(out, base, TEXTS)
    torch.testing.assert_close(got, predictor.predict_proba(TEXTS), atol=1e-4, rtol=0)
    assert json.loads((out / "labels.json").read_text()) == predictor.labels


@pytest.mark.parametrize("lora_run", ["bert", "gpt2"], indirect=True)
def test_the_temperature_changes_probabilities_not_labels_and_the_merged_export_carries_it(lora_run, tmp_path):
    import shutil

    from loratune.runs import files, manifest

    run = shutil.copytree(lora_run, tmp_path / "run")
    files.save_calibration(run, {"temperature": 1.0})
    manifest.seal(run)  # as if the run had fitted this temperature
    plain = load_run(run).predictor(device="cpu", precision="fp32")
    files.save_calibration(run, {"temperature": 2.5})
    manifest.seal(run)
    scaled = load_run(run).predictor(device="cpu", precision="fp32")
    assert scaled.temperature == 2.5
    before, after = plain.predict_proba(TEXTS), scaled.predict_proba(TEXTS)
    assert (before.argmax(-1) == after.argmax(-1)).all()  # T > 0 never changes a label
    assert (after.max(-1).values < before.max(-1).values).all()  # T > 1 softens every top probability
    got = pipeline_probabilities(export_run(run, tmp_path / "merged"), scaled.labels, TEXTS)
    torch.testing.assert_close(got, after, atol=1e-4, rtol=0)


def test_training_moved_the_model_so_the_comparison_means_something(trained_run, tiny_models, data_dir):
    run = trained_run(tiny_models["bert"], data_dir)
    reopened = load_run(run)
    model, tokenizer, _, _ = reopened.trained_model(), reopened.tokenizer, reopened.labels, reopened.config
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.inference_mode():
        adapted = model(**batch).logits
        with model.disable_adapter():
            plain = model(**batch).logits
    assert (adapted - plain).abs().max() > 1e-3


@pytest.mark.parametrize("lora_run", ["bert"], indirect=True)
def test_merged_export_loads_without_peft_or_loratune(lora_run, tmp_path):
    out = export_run(lora_run, tmp_path / "merged")
    code = f"""
import json, sys
sys.modules["peft"] = None  # any `import peft` now raises ImportError
sys.modules["loratune"] = None
from transformers import pipeline
rows = pipeline("text-classification", model={str(out)!r}, top_k=None, device="cpu")({TEXTS!r}, truncation=True)
assert sys.modules["peft"] is None and sys.modules["loratune"] is None
print(json.dumps([{{d["label"]: d["score"] for d in row}} for row in rows]))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    predictor = load_run(lora_run).predictor(device="cpu", precision="fp32")
    got = torch.tensor([[row[label] for label in predictor.labels] for row in rows])
    torch.testing.assert_close(got, predictor.predict_proba(TEXTS), atol=1e-4, rtol=0)


def test_full_run_exports_its_whole_model(trained_run, tiny_models, data_dir, tmp_path):
    run = trained_run(tiny_models["distilbert"], data_dir, lora__method="full")
    out = export_run(run, tmp_path / "merged")
    predictor = load_run(run).predictor(device="cpu", precision="fp32")
    got = pipeline_probabilities(out, predictor.labels, TEXTS)
    torch.testing.assert_close(got, predictor.predict_proba(TEXTS), atol=1e-4, rtol=0)
    with pytest.raises(RunError, match="no PEFT adapter"):
        export_run(run, tmp_path / "adapter", adapter_only=True)


def test_head_run_with_mean_pooling_cannot_be_exported(trained_run, tiny_models, data_dir, tmp_path):
    run = trained_run(tiny_models["bert"], data_dir, lora__method="head", model__pooling="mean")
    with pytest.raises(RunError, match="mean pooling") as info:
        export_run(run, tmp_path / "merged")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("lora_run", ["bert"], indirect=True)
def test_export_replaces_an_earlier_export_only_with_overwrite_and_never_the_users_files(lora_run, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    export_run(lora_run, out)  # an empty folder is fine
    with pytest.raises(RunError, match="not empty.*--overwrite"):
        export_run(lora_run, out)
    export_run(lora_run, out, overwrite=True)
    assert (out / "model.safetensors").is_file()
    (out / "notes.txt").write_text("mine")  # a file loratune did not write
    with pytest.raises(RunError, match=r"holds files loratune did not write \(notes.txt\)"):
        export_run(lora_run, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("lora_run", ["bert"], indirect=True)
def test_a_failed_export_leaves_nothing_behind(lora_run, tmp_path, monkeypatch):
    import loratune.export.plain as export

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_save_tokenizer", fail)
    with pytest.raises(OSError, match="disk full"):
        export_run(lora_run, tmp_path / "merged")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("lora_run", ["bert"], indirect=True)
def test_cli_export_writes_both_forms_and_explains_mistakes(lora_run, tmp_path, capsys):
    assert main(["export", str(lora_run), "--output-dir", str(tmp_path / "m")]) == 0
    out, err = capsys.readouterr()
    assert "transformers model" in out
    assert "Writing model shards" not in err  # the bars stay hidden, also after the model load inside export
    assert main(["export", str(lora_run), "--output-dir", str(tmp_path / "a"), "--adapter-only"]) == 0
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    assert main(["export", str(lora_run), "--output-dir", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and err.count("\n") == 1
    assert main(["export", str(lora_run), "--output-dir", str(tmp_path / "m"), "--overwrite"]) == 0
    assert main(["export", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "x")]) == 2
