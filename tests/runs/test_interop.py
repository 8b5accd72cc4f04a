"""A run folder as other tools see it: PEFT and transformers load it as loratune does, it survives a move, and a
damaged or tampered folder fails with one clear RunError instead of loading a wrong model or unpickling a file."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import PROBE_TEXTS as TEXTS
from conftest import pipeline_probabilities, write_csv

import loratune
from loratune import RunError
from loratune.export.plain import export_run
from loratune.runs import manifest
from loratune.runs.folder import load_run


@pytest.fixture
def bert_lora_run(trained_run, tiny_models, data_dir) -> Path:
    return trained_run(tiny_models["bert"], data_dir)


@pytest.fixture
def run_copy(bert_lora_run, tmp_path) -> Path:
    """A private copy of the shared run, free to damage."""
    return Path(shutil.copytree(bert_lora_run, tmp_path / "run"))


def _tokenize(tokenizer, texts):
    return tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_peft_loads_the_adapter_with_the_logits_loratune_gets(trained_run, tiny_models, data_dir, arch):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run = trained_run(tiny_models[arch], data_dir)
    reopened = load_run(run)
    ours, tokenizer, labels, cfg = reopened.trained_model(), reopened.tokenizer, reopened.labels, reopened.config
    base = AutoModelForSequenceClassification.from_pretrained(
        cfg.model.name_or_path, num_labels=len(labels), attn_implementation="eager"
    )
    base.config.pad_token_id = tokenizer.pad_token_id
    theirs = PeftModel.from_pretrained(base, run / "adapter").eval()
    batch = _tokenize(tokenizer, TEXTS)
    with torch.inference_mode():
        torch.testing.assert_close(theirs(**batch).logits, ours(**batch).logits, atol=1e-6, rtol=0)


def test_label_names_survive_the_round_trip(trained_run, tiny_models, data_dir, tmp_path):
    rows = [{"text": f"{word} film", "label": label} for word, label in [("great", "très bon"), ("awful", "nul")]]
    write_csv(tmp_path / "data" / "train.csv", rows * 15)
    run = trained_run(tiny_models["bert"], tmp_path / "data")
    assert json.loads((run / "labels.json").read_text()) == ["nul", "très bon"]
    predictor = load_run(run).predictor(device="cpu", precision="fp32")
    assert predictor.labels == ["nul", "très bon"]
    assert set(predictor.predict(["great film"])[0]["probabilities"]) == {"nul", "très bon"}
    out = export_run(run, tmp_path / "merged")
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "nul", "1": "très bon"}
    assert set(pipeline_probabilities(out, predictor.labels, ["great film"]).shape) == {1, 2}


def test_a_moved_run_folder_still_loads(bert_lora_run, tmp_path):
    expected = load_run(bert_lora_run).predictor(device="cpu", precision="fp32").predict_proba(TEXTS)
    moved = Path(shutil.copytree(bert_lora_run, tmp_path / "elsewhere" / "renamed-run"))
    torch.testing.assert_close(
        load_run(moved).predictor(device="cpu", precision="fp32").predict_proba(TEXTS), expected
    )
    assert loratune.load_run(moved).summary.labels == ["bad", "good"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_round_trip_matches_cpu(bert_lora_run):
    cpu = load_run(bert_lora_run).predictor(device="cpu", precision="fp32").predict_proba(TEXTS)
    cuda = load_run(bert_lora_run).predictor(device="cuda", precision="fp32")
    assert next(cuda.model.parameters()).device.type == "cuda"
    torch.testing.assert_close(cuda.predict_proba(TEXTS), cpu, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Safe loading


@pytest.fixture
def no_unpickling(monkeypatch):
    """Make torch.load and pickle fail loudly, so a test shows they are never reached."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"unpickling attempted: {args[:1]}")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_loading_a_run_never_unpickles(bert_lora_run, no_unpickling):
    reopened = load_run(bert_lora_run)
    reopened.trained_model()
    labels = reopened.labels
    assert labels == ["bad", "good"]


def test_a_planted_pickle_is_refused_not_loaded(run_copy, no_unpickling):
    adapter = run_copy / "adapter"
    from safetensors.torch import load_file

    weights = load_file(adapter / "adapter_model.safetensors")
    (adapter / "adapter_model.safetensors").unlink()
    with open(adapter / "adapter_model.bin", "wb") as handle:  # what torch.save would write: a pickle
        pickle.dump({k: v.numpy() for k, v in weights.items()}, handle)
    shutil.copy(adapter / "adapter_model.bin", adapter / "pytorch_model.bin")
    with pytest.raises(RunError, match="safetensors") as info:
        load_run(run_copy).trained_model()
    assert "\n" not in str(info.value)


def test_a_full_run_without_safetensors_is_refused(trained_run, tiny_models, data_dir, tmp_path, no_unpickling):
    run = Path(shutil.copytree(trained_run(tiny_models["distilbert"], data_dir, lora__method="full"), tmp_path / "r"))
    for file in (run / "model").glob("*.safetensors"):
        file.unlink()
    (run / "model" / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(RunError, match="safetensors"):
        load_run(run).trained_model()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda run: _truncate(run / "adapter" / "adapter_model.safetensors"), "damaged"),
        (lambda run: (run / "adapter" / "adapter_model.safetensors").write_bytes(b""), "damaged"),
        (lambda run: (run / "labels.json").write_text('["bad", "go'), "labels.json is damaged"),
        (lambda run: (run / "labels.json").write_text('["bad", "good", "meh"]'), "does not match"),
        (lambda run: (run / "labels.json").write_text('{"bad": 0, "good": 1}'), "list of two or more"),
        (lambda run: (run / "labels.json").write_text('["good", "good"]'), "distinct"),
        (lambda run: (run / "labels.json").unlink(), "missing"),
        (lambda run: (run / "config.yaml").write_text("model: [unclosed\n"), "config.yaml"),
        (lambda run: (run / "config.yaml").write_text("lora:\n  method: magic\n"), "config.yaml"),
        (lambda run: (run / "adapter" / "adapter_config.json").write_text("{"), "damaged"),
        (lambda run: (run / "COMPLETE").unlink(), "not a finished run"),
    ],
    ids=[
        "truncated-weights",
        "empty-weights",
        "labels-invalid-json",
        "labels-count",
        "labels-dict",
        "labels-repeated",
        "labels-missing",
        "config-invalid-yaml",
        "config-invalid-value",
        "adapter-config",
        "unfinished",
    ],
)
def test_a_damaged_run_gives_one_clear_run_error(run_copy, damage, match):
    damage(run_copy)
    with pytest.raises(RunError, match=match) as info:
        load_run(run_copy).trained_model()
    assert "\n" not in str(info.value)


def test_tampered_metrics_give_a_run_error(run_copy):
    (run_copy / "metrics.json").write_text("{not json")
    with pytest.raises(RunError, match="metrics.json is damaged"):
        loratune.load_run(run_copy)


def test_a_full_run_with_a_wrong_label_count_is_refused(trained_run, tiny_models, data_dir, tmp_path):
    run = Path(shutil.copytree(trained_run(tiny_models["distilbert"], data_dir, lora__method="full"), tmp_path / "r"))
    (run / "labels.json").write_text('["bad", "good", "meh"]')
    with pytest.raises(RunError, match=r"labels\.json does not match its checksum"):
        load_run(run)
    manifest.seal(run)  # as if the run had written them so: the saved model itself then disagrees
    with pytest.raises(RunError, match="3 labels but the saved model has 2"):
        load_run(run).trained_model()


def test_remote_code_is_not_trusted_unless_the_config_says_so(bert_lora_run, monkeypatch):
    import transformers

    seen = []
    for cls in (transformers.AutoModelForSequenceClassification, transformers.AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, **kwargs):
            seen.append(kwargs.get("trust_remote_code", "not passed"))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_run(bert_lora_run).trained_model()
    assert seen and all(value is False for value in seen), seen
