"""The method table (loratune.model.methods): a new method is one entry, and each entry's answers are its own."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from loratune.cli import main
from loratune.errors import ConfigError
from loratune.model.methods import METHODS, PeftAdapter, adapter_parameter_count, attention_targets, method_of
from loratune.runs.folder import load_run
from loratune.training.recipe import run


def rslora_config(model, lora_args, targets, head):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora_args.r,
        lora_alpha=lora_args.lora_alpha,
        target_modules=targets,
        modules_to_save=list(head),
        use_rslora=True,  # scale by alpha / sqrt(r): what makes this a method of its own
    )


def test_a_method_added_as_one_entry_trains_saves_reloads_and_predicts(tmp_path, tiny_bert, data_dir, monkeypatch):
    entry = PeftAdapter(
        "rslora",
        "rsLoRA",
        2e-3,
        saved_in="adapter",
        adapter=True,
        peft_config=rslora_config,
        default_targets=attention_targets,
    )
    monkeypatch.setitem(METHODS, "rslora", entry)  # the one change a new method needs

    result = run(tiny_config(tiny_bert, data_dir, tmp_path / "run", lora__method="rslora", train__num_epochs=1))

    saved = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert saved["use_rslora"] is True and result.summary.method == "rslora"
    reopened = load_run(result.run_dir)
    assert reopened.method is entry
    predictions = reopened.predictor(device="cpu", precision="fp32").predict(["great movie", "awful plot"])
    assert [p["label"] in ("bad", "good") for p in predictions] == [True, True]
    assert main(["evaluate", str(result.run_dir), "--precision", "fp32"]) == 0


def test_an_unknown_method_is_one_line_naming_the_table():
    with pytest.raises(
        ConfigError, match=r"lora.method must be one of \['lora', 'dora', 'ia3', 'head', 'full', 'none'\]"
    ):
        method_of("qlora")


def test_each_entry_says_what_it_trains_and_saves():
    assert [name for name, m in METHODS.items() if not m.trains] == ["none"]
    assert {name: m.saved_in for name, m in METHODS.items()} == {
        "lora": "adapter",
        "dora": "adapter",
        "ia3": "adapter",
        "head": "head",
        "full": "model",
        "none": None,
    }
    # PEFT's mixed-adapter batches (`adapter_names`) serve plain LoRA only
    assert [name for name, m in METHODS.items() if m.shares_base_in_batch] == ["lora"]


@pytest.mark.parametrize("name", ["lora", "dora", "ia3", "head"])
def test_adapter_weights_are_counted_as_peft_names_them(name, tiny_bert):
    from loratune.config import load_config
    from loratune.model.build import build_model

    cfg = load_config(None, {"model.name_or_path": str(tiny_bert), "lora.method": name})
    built = build_model(cfg.model, cfg.lora, ["bad", "good"])
    # by the parameters' names: what PEFT calls an adapter's own weights (a head in modules_to_save is not one)
    by_name = sum(
        p.numel()
        for n, p in built.model.named_parameters()
        if p.requires_grad and any(part in n for part in ("lora_A", "lora_B", "lora_magnitude", "ia3_l"))
    )
    assert adapter_parameter_count(built.model) == by_name == built.parameter_counts()["trainable_params_lora"]
    assert (by_name > 0) == METHODS[name].adapter
    head = sum(p.numel() for n, p in built.model.named_parameters() if p.requires_grad and "classifier" in n)
    assert built.parameter_counts()["trainable_params"] >= by_name + head > 0
    assert all(not p.requires_grad for n, p in built.model.named_parameters() if "word_embeddings" in n)
    assert isinstance(next(built.model.parameters()), torch.nn.Parameter)
