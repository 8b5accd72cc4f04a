"""Tests for loratune.config: defaults, YAML + overrides, type conversion, validation messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import REPO

from loratune import Config, ConfigError, load_config
from loratune.config import all_keys
from loratune.model.methods import FULL_HEAD_LEARNING_RATE, method_of

CONFIGS = sorted((REPO / "configs").glob("*.y*ml"))


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_need_no_file():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.lora.method == "lora"
    assert cfg.lora.r == 8
    assert cfg.train.num_epochs == 3
    assert cfg.train.learning_rate is None
    assert cfg.data.max_length == 128


def test_default_learning_rate_depends_on_the_method():
    train = load_config().train
    assert train.resolved_learning_rate("lora") == method_of("lora").learning_rate == 2e-3
    assert train.resolved_learning_rate("full") < train.resolved_learning_rate("lora")
    assert load_config(None, ["train.learning_rate=0.1"]).train.resolved_learning_rate("full") == 0.1


def test_the_head_takes_the_learning_rate_except_in_full_fine_tuning():
    train = load_config(None).train
    assert train.resolved_head_learning_rate("lora") == train.resolved_learning_rate("lora")
    assert train.resolved_head_learning_rate("full") == FULL_HEAD_LEARNING_RATE > train.resolved_learning_rate("full")
    assert load_config(None, ["train.head_learning_rate=0.1"]).train.resolved_head_learning_rate("full") == 0.1
    with pytest.raises(ConfigError, match=r"train.head_learning_rate must be in \(0, 1\], got 0.0"):
        load_config(None, ["train.head_learning_rate=0"])


def test_yaml_values_override_defaults(tmp_path):
    cfg = load_config(write_yaml(tmp_path, "lora:\n  r: 16\ntrain:\n  num_epochs: 5\n"))
    assert cfg.lora.r == 16
    assert cfg.train.num_epochs == 5
    assert cfg.train.batch_size == Config().train.batch_size


def test_overrides_win_over_yaml(tmp_path):
    path = write_yaml(tmp_path, "lora:\n  r: 16\ntrain:\n  num_epochs: 5\n")
    cfg = load_config(path, ["lora.r=4", "data.path=some/folder"])
    assert cfg.lora.r == 4
    assert cfg.train.num_epochs == 5
    assert cfg.data.path == "some/folder"


def test_overrides_may_be_a_dict():
    assert load_config(None, {"train.batch_size": "16"}).train.batch_size == 16


def test_strings_are_converted_to_the_field_type(tmp_path):
    # PyYAML reads 3e-4 (no dot) as a string; the config must still be a float.
    cfg = load_config(write_yaml(tmp_path, "train:\n  learning_rate: 3e-4\n  progress: 'no'\n"))
    assert cfg.train.learning_rate == pytest.approx(3e-4)
    assert isinstance(cfg.train.learning_rate, float)
    assert cfg.train.progress is False
    cfg = load_config(None, ["train.num_epochs=2", "lora.lora_alpha=8", "train.overwrite=true"])
    assert cfg.train.num_epochs == 2 and isinstance(cfg.train.num_epochs, int)
    assert cfg.lora.lora_alpha == 8.0 and isinstance(cfg.lora.lora_alpha, float)
    assert cfg.train.overwrite is True


def test_comma_separated_list_becomes_a_list():
    cfg = load_config(None, ["lora.target_modules=query, value"])
    assert cfg.lora.target_modules == ["query", "value"]


def test_none_clears_an_optional_value(tmp_path):
    cfg = load_config(write_yaml(tmp_path, "train:\n  learning_rate: 0.01\n"), ["train.learning_rate=none"])
    assert cfg.train.learning_rate is None


def test_unknown_key_suggests_closest_match():
    with pytest.raises(ConfigError, match=r"Unknown key 'train.lr'. Did you mean 'train.learning_rate'\?"):
        load_config(None, ["train.lr=1"])


def test_misspelled_key_suggests_the_right_spelling(tmp_path):
    with pytest.raises(ConfigError, match=r"Did you mean 'train.num_epochs'\?"):
        load_config(write_yaml(tmp_path, "train:\n  num_epoch: 3\n"))


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown key 'trian'. Did you mean 'train'\?"):
        load_config(write_yaml(tmp_path, "trian:\n  num_epochs: 3\n"))


def test_override_without_a_section_is_rejected():
    with pytest.raises(ConfigError, match=r"needs a section"):
        load_config(None, ["learning_rate=1"])


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match=r"must look like key=value"):
        load_config(None, ["train.learning_rate"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.num_epochs=zero", r"train.num_epochs='zero' is not a valid int"),
        ("train.num_epochs=1.5", r"train.num_epochs='1.5' is not a valid int"),
        ("train.num_epochs=0", r"train.num_epochs must be at least 1, got 0"),
        ("train.learning_rate=-1", r"train.learning_rate must be in \(0, 1\], got -1"),
        ("train.warmup_ratio=1.5", r"train.warmup_ratio must be in \[0, 1\), got 1.5"),
        ("train.progress=maybe", r"train.progress='maybe' is not a valid bool"),
        ("train.precision=fp8", r"train.precision must be one of .*'bf16'.*got 'fp8'"),
        ("lora.method=adapter", r"lora.method must be one of .*'lora'.*got 'adapter'"),
        ("lora.r=0", r"lora.r must be at least 1, got 0"),
        ("lora.lora_dropout=1", r"lora.lora_dropout must be in \[0, 1\)"),
        ("data.validation_ratio=0.7", r"data.validation_ratio must be in \(0, 0.5\), got 0.7"),
        ("data.max_train_samples=0", r"data.max_train_samples must be at least 1, got 0"),
        ("data.max_length=4", r"data.max_length must be at least 8 tokens, got 4"),
    ],
)
def test_bad_value_is_rejected_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_several_problems_are_reported_together():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.lr=1", "lora.r=0", "data.max_length=2", "train.batch_size=big"])
    message = str(info.value)
    for part in ("train.lr", "lora.r", "data.max_length", "train.batch_size"):
        assert part in message


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_is_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_config(write_yaml(tmp_path, "train: [unclosed\n"))


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"must hold a mapping"):
        load_config(write_yaml(tmp_path, "- just\n- a list\n"))


def test_section_that_is_not_a_mapping_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"Section 'train' must be a mapping"):
        load_config(write_yaml(tmp_path, "train: 3\n"))


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.num_epochs = 10  # type: ignore[misc]


def test_to_yaml_round_trips_to_an_equal_config(tmp_path):
    cfg = load_config(
        None,
        [
            "data.path=data/x",
            "train.learning_rate=3e-4",
            "lora.target_modules=query,value",
            "lora.modules_to_save=classifier",
            "train.progress=false",
        ],
    )
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_every_key_is_a_section_dot_field():
    keys = all_keys()
    assert "train.learning_rate" in keys and "lora.r" in keys and "data.path" in keys
    assert all(key.split(".")[0] in ("data", "model", "lora", "train") for key in keys)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(path), Config)


def test_annotated_example_yaml_loads_back_to_the_defaults(tmp_path):
    from loratune.config import Config, example_yaml

    text = example_yaml()
    assert "# Peak AdamW learning rate" in text and "learning_rate: null" in text
    path = tmp_path / "example.yaml"
    path.write_text(text)
    assert load_config(path) == Config()
