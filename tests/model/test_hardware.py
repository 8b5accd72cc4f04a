"""Tests for loratune.model.hardware: allowed values, `auto`, and how a model is held for training and inference."""

from __future__ import annotations

import pytest
import torch

from loratune.cli import main
from loratune.config import load_config
from loratune.errors import ConfigError
from loratune.model import hardware


def test_an_unknown_device_is_a_one_line_error_naming_the_choices():
    with pytest.raises(ConfigError, match=r"Unknown device 'cpuu'; use one of \['auto', 'cpu', 'cuda'\]"):
        hardware.resolve_device("cpuu")


def test_predict_with_an_unknown_device_prints_one_line_and_exits_2(bert_run, capsys):
    assert main(["predict", str(bert_run.run_dir), "--text", "great", "--device", "cpuu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Unknown device 'cpuu'" in err


def test_config_takes_its_allowed_values_from_the_precision_module():
    for value in hardware.PRECISIONS:
        assert load_config(None, [f"train.precision={value}"]).train.precision == value
    with pytest.raises(ConfigError, match=r"train.device must be one of \['auto', 'cpu', 'cuda'\]"):
        load_config(None, ["train.device=tpu"])


def test_auto_precision_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    assert hardware.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    assert hardware.resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(ConfigError, match=r"fp16 needs a CUDA GPU"):
        hardware.resolve_precision("fp16", "cpu")


def test_training_holds_frozen_weights_in_bf16_and_trainable_ones_in_fp32():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    hardware.prepare_for_training(model, "bf16", "NO")
    assert {p.dtype for p in model[0].parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model[1].parameters()} == {torch.float32}


def test_sharded_training_and_fp32_leave_the_model_as_loaded():
    for dtype, distributed in (("bf16", "FSDP"), ("bf16", "DEEPSPEED"), ("fp32", "NO")):
        model = torch.nn.Linear(4, 2).requires_grad_(False)
        hardware.prepare_for_training(model, dtype, distributed)
        assert model.weight.dtype == torch.float32, (dtype, distributed)


def test_autocast_runs_matmuls_in_bf16_only_when_asked():
    layer = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with hardware.autocast("bf16", "cpu"):
        assert layer(x).dtype == torch.bfloat16
    with hardware.autocast("fp32", "cpu"):
        assert layer(x).dtype == torch.float32


def test_inference_holds_the_whole_model_in_one_dtype():
    model = hardware.prepare_for_inference(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout()), "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training


def test_a_gpu_never_gets_cudnn_attention_and_a_cpu_is_left_alone():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with hardware.attention_kernels("cuda"):  # the flags are process-wide: settable without a GPU
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with hardware.attention_kernels("cpu"):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
