"""Tests for training.compiling: which modes a device accepts, and that a compiler failure never ends a run."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import tiny_config

from loratune.errors import ConfigError
from loratune.training.compiling import StepModel, resolve_compile
from loratune.training.recipe import run


def test_auto_is_off_and_an_unknown_mode_is_refused():
    assert resolve_compile("auto") == "off" and resolve_compile("on") == "on"
    with pytest.raises(ConfigError, match="Unknown compile mode 'cudagraphs'"):
        resolve_compile("cudagraphs")


def test_a_compiled_step_shares_the_models_parameters(monkeypatch):
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(torch, "compile", lambda module, **_: lambda **batch: module(**batch))
    runner = StepModel(model, "on")
    assert runner.compiled and runner.eager is model
    out = runner.run(lambda step_model: step_model(input=torch.ones(1, 2)))
    assert torch.equal(out, model(torch.ones(1, 2))) and runner.compile_seconds is not None


def test_a_compiler_failure_falls_back_to_eager_with_one_line(tiny_bert, data_dir, tmp_path, monkeypatch, caplog):
    def broken(**_):
        raise RuntimeError("inductor: no C compiler\nand a long traceback")

    monkeypatch.setattr(torch, "compile", lambda module, **_: broken)
    cfg = tiny_config(tiny_bert, data_dir, train__output_dir=str(tmp_path / "run"), train__compile="on")
    with caplog.at_level(logging.WARNING, logger="loratune.training.compiling"):
        result = run(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "loratune.training.compiling"]
    assert lines == [
        "torch.compile failed (RuntimeError: inductor: no C compiler); training goes on without it "
        "(--compile off hides this)."
    ]
    assert result.summary.history and result.summary.throughput.compile_seconds is None
    assert result.config.train.compile == "on"  # what was asked; the warning says what happened
