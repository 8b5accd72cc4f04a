"""Tests for loratune.model.build: LoRA targets per architecture, what trains, pad tokens, bad model folders."""

from __future__ import annotations

import pytest
import torch

from loratune import ModelError
from loratune.config import LoraArgs, ModelArgs
from loratune.model.build import build_model
from loratune.model.loading import HEAD_NAMES, load_tokenizer

LABELS = ["bad", "good"]
TEXTS = ["great", "the movie was really great", "awful plot", "a very very awful story with really bad music"]

EXPECTED_TARGETS = {
    "bert": ["query", "key", "value", "attention.output.dense"],
    "roberta": ["query", "key", "value", "attention.output.dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin"],
    "gpt2": ["c_attn", "attn.c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
EXPECTED_HEADS = {
    "bert": {"classifier", "pooler"},
    "roberta": {"classifier"},
    "distilbert": {"pre_classifier", "classifier"},
    "gpt2": {"score"},
    "llama": {"score"},
}
ARCHITECTURES = list(EXPECTED_TARGETS)


def build(model_dir, labels=LABELS, **lora) -> object:
    return build_model(ModelArgs(name_or_path=str(model_dir)), LoraArgs(**lora), labels)


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def adapted_module_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if hasattr(m, "lora_A")]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lora_targets_the_attention_projections_of_each_architecture(tiny_models, arch):
    built = build(tiny_models[arch])
    assert built.target_modules == EXPECTED_TARGETS[arch]
    adapted = adapted_module_names(built.model)
    assert adapted
    for target in EXPECTED_TARGETS[arch]:
        assert any(name.endswith(target) for name in adapted), target


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_no_lora_target_is_inside_the_head(tiny_models, arch):
    built = build(tiny_models[arch])
    for name in adapted_module_names(built.model):
        assert not set(name.split(".")) & set(HEAD_NAMES), name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_modules_are_the_new_classification_layers(tiny_models, arch):
    assert set(build(tiny_models[arch]).head_modules) == EXPECTED_HEADS[arch]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_only_lora_and_head_parameters_are_trainable(tiny_models, arch):
    built = build(tiny_models[arch])
    names = trainable_names(built.model)
    assert any("lora_" in n for n in names)
    assert any("modules_to_save" in n for n in names)
    for name in names:
        assert "lora_" in name or "modules_to_save" in name, name
    for head in EXPECTED_HEADS[arch]:
        assert any(f".{head}.modules_to_save." in n for n in names), head


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_parameter_counts_separate_adapter_head_and_total(tiny_models, arch):
    counts = build(tiny_models[arch]).parameter_counts()
    assert 0 < counts["trainable_params_lora"] < counts["trainable_params"] < counts["total_params"]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoder_without_pad_token_gets_eos_as_pad_without_resizing(tiny_models, arch):
    from transformers import AutoConfig, AutoTokenizer

    assert AutoTokenizer.from_pretrained(tiny_models[arch]).pad_token is None
    vocab_size = AutoConfig.from_pretrained(tiny_models[arch]).vocab_size
    built = build(tiny_models[arch])
    tokenizer = built.tokenizer
    assert tokenizer.pad_token == tokenizer.eos_token
    assert built.model.config.pad_token_id == tokenizer.pad_token_id
    assert built.model.get_input_embeddings().weight.shape[0] == vocab_size


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_padded_batch_of_different_lengths_gives_each_texts_own_logits(tiny_models, arch):
    built = build(tiny_models[arch])
    model, tokenizer = built.model.eval(), built.tokenizer
    with torch.no_grad():
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
        assert len(set(batch["attention_mask"].sum(-1).tolist())) > 1  # lengths really differ
        logits = model(**batch).logits  # (4, seq_len) -> (4, 2)
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in TEXTS])
    assert logits.shape == (4, 2)
    torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-4)


def test_load_tokenizer_keeps_an_existing_pad_token(tiny_bert):
    assert load_tokenizer(str(tiny_bert)).pad_token == "[PAD]"


def test_classifier_checkpoint_keeps_its_head_for_the_same_labels(tiny_bert_classifier):
    from transformers import AutoModelForSequenceClassification

    saved = AutoModelForSequenceClassification.from_pretrained(tiny_bert_classifier).eval()
    built = build(tiny_bert_classifier, method="none")
    assert set(built.head_modules) == {"classifier", "pooler"}
    batch = built.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(built.model.eval()(**batch).logits, saved(**batch).logits)


def test_classifier_checkpoint_gets_a_new_head_for_more_labels(tiny_bert_classifier):
    built = build(tiny_bert_classifier, labels=["a", "b", "c"])
    assert "classifier" in built.head_modules
    batch = built.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert built.model(**batch).logits.shape == (4, 3)
    assert built.model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert any("classifier.modules_to_save" in n for n in trainable_names(built.model))


def test_explicit_target_and_head_modules_are_used(tiny_bert):
    built = build(tiny_bert, target_modules=["value"], modules_to_save=["classifier"])
    assert built.target_modules == ["value"]
    assert built.head_modules == ["classifier"]
    assert all(n.endswith("value") for n in adapted_module_names(built.model))
    assert not any("pooler" in n for n in trainable_names(built.model))


def test_head_method_trains_only_the_head(tiny_models):
    built = build(tiny_models["distilbert"], method="head")
    names = trainable_names(built.model)
    assert names
    assert all(n.split(".")[0] in ("pre_classifier", "classifier") for n in names), names
    assert not any("lora_" in n for n, _ in built.model.named_parameters())


def test_full_method_trains_every_weight(tiny_bert):
    model = build(tiny_bert, method="full").model
    assert all(p.requires_grad for p in model.parameters())


def test_none_method_trains_nothing(tiny_bert):
    assert trainable_names(build(tiny_bert, method="none").model) == []


def test_dora_adds_trainable_magnitudes(tiny_bert):
    names = trainable_names(build(tiny_bert, method="dora").model)
    assert any("lora_magnitude_vector" in n for n in names)
    assert all("lora_" in n or "modules_to_save" in n for n in names)


def test_ia3_trains_only_scaling_vectors_and_head(tiny_bert):
    built = build(tiny_bert, method="ia3")
    names = trainable_names(built.model)
    assert any("ia3_" in n for n in names)
    assert all("ia3_" in n or "modules_to_save" in n for n in names), names
    assert built.parameter_counts()["trainable_params_lora"] > 0


def test_model_without_sequence_classification_class_is_rejected(tiny_clip):
    with pytest.raises(ModelError, match=r"has no sequence-classification class"):
        build(tiny_clip)


def test_folder_without_config_json_is_rejected(tmp_path, tiny_bert):
    for name in ("vocab.txt", "tokenizer_config.json"):
        if (tiny_bert / name).exists():
            (tmp_path / name).write_bytes((tiny_bert / name).read_bytes())
    with pytest.raises(ModelError, match=str(tmp_path)):
        build(tmp_path)


def test_missing_model_path_is_rejected(tmp_path):
    with pytest.raises(ModelError, match=r"does not exist; check the path"):
        build(tmp_path / "no-such-model")


def test_unknown_target_module_is_reported(tiny_bert):
    with pytest.raises(ModelError, match=r"PEFT could not adapt \['nonexistent'\]"):
        build(tiny_bert, target_modules=["nonexistent"])


def test_ia3_records_the_modules_it_adapted(tiny_bert):
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING

    built = build(tiny_bert, method="ia3")
    assert built.target_modules == TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING["bert"]
