"""Every number in a config is finite and in range, checked up front and alike by `loratune validate`, `loratune
train` and `load_config` (config/checks.py); config files are UTF-8 YAML without aliases (config/safe_yaml.py)."""

from __future__ import annotations

import dataclasses
import re
import time
import typing

import pytest

from loratune.cli import main
from loratune.config import SECTIONS, TrainArgs, load_config
from loratune.config.checks import NUMBERS, check_class_weights
from loratune.errors import ConfigError


def _numeric(annotation) -> bool:
    return any(a in (int, float) for a in (annotation, *typing.get_args(annotation)))


def test_every_numeric_field_has_a_range():
    numeric = {
        f"{name}.{f.name}"
        for name, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        if _numeric(typing.get_type_hints(cls)[f.name])
    }
    assert numeric == set(NUMBERS)


def test_the_defaults_are_in_range():
    load_config(None)


def _validate(capsys, *argv: str) -> tuple[int, str]:
    code = main(["validate", *argv])
    return code, capsys.readouterr().err


# The reported values: validate accepted each, training failed on it later (or only after training).
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seed", "-1"], r"train.seed must be an integer in \[0, 2\*\*32\), got -1 \(--seed\)"),
        (["--learning-rate", "nan"], r"train.learning_rate must be in \(0, 1\], got nan \(--learning-rate\)"),
        (["--learning-rate", "inf"], r"train.learning_rate must be in \(0, 1\], got inf"),
        (["--learning-rate", "1e30"], r"train.learning_rate must be in \(0, 1\], got 1e\+30"),
        (["train.weight_decay=nan"], r"train.weight_decay must be a finite number of at least 0, got nan"),
        (["lora.lora_alpha=nan"], r"lora.lora_alpha must be a finite number above 0, got nan \(--lora-alpha\)"),
    ],
)
def test_validate_refuses_a_reported_number_in_one_line(capsys, argv, message):
    code, err = _validate(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: ")
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.seed=4294967296", r"train.seed must be an integer in \[0, 2\*\*32\), got 4294967296"),
        ("train.seed=1e400", r"train.seed='1e400' is not a valid int"),
        ("train.head_learning_rate=nan", r"train.head_learning_rate must be in \(0, 1\], got nan"),
        ("train.learning_rate=1.5", r"train.learning_rate must be in \(0, 1\], got 1.5"),
        ("train.weight_decay=-0.1", r"train.weight_decay must be a finite number of at least 0, got -0.1"),
        ("train.weight_decay=inf", r"train.weight_decay must be a finite number of at least 0, got inf"),
        ("train.max_grad_norm=inf", r"train.max_grad_norm must be a finite number of at least 0, got inf"),
        ("train.max_grad_norm=-1", r"train.max_grad_norm must be a finite number of at least 0"),
        ("train.warmup_ratio=nan", r"train.warmup_ratio must be in \[0, 1\), got nan"),
        ("train.batch_size=0", r"train.batch_size must be at least 1, got 0 \(--batch-size\)"),
        ("train.eval_batch_size=-4", r"train.eval_batch_size must be at least 1, got -4"),
        ("train.gradient_accumulation_steps=0", r"train.gradient_accumulation_steps must be at least 1, got 0"),
        ("train.num_epochs=0", r"train.num_epochs must be at least 1, got 0 \(--epochs\)"),
        ("train.early_stopping_patience=-1", r"train.early_stopping_patience must be at least 0, got -1"),
        ("lora.lora_alpha=0", r"lora.lora_alpha must be a finite number above 0, got 0.0"),
        ("lora.lora_alpha=inf", r"lora.lora_alpha must be a finite number above 0, got inf"),
        ("lora.lora_dropout=nan", r"lora.lora_dropout must be in \[0, 1\), got nan"),
        ("lora.r=0", r"lora.r must be at least 1, got 0 \(--lora-r\)"),
        ("model.dropout=nan", r"model.dropout must be in \[0, 1\), got nan"),
        ("data.test_ratio=nan", r"data.test_ratio must be in \(0, 0.5\), got nan"),
        ("data.validation_ratio=0", r"data.validation_ratio must be in \(0, 0.5\), got 0.0"),
        ("data.max_eval_samples=0", r"data.max_eval_samples must be at least 1, got 0"),
        ("data.max_length=7", r"data.max_length must be at least 8 tokens, got 7"),
    ],
)
def test_a_number_out_of_range_names_key_flag_value_and_range(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_a_yaml_boolean_is_no_number():
    with pytest.raises(ConfigError, match=r"train.num_epochs=True is not a valid int"):
        load_config(None, {"train.num_epochs": True})


def test_yaml_numbers_are_checked_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: .nan\n  seed: -1\nlora:\n  lora_alpha: .inf\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "train.learning_rate" in message and "train.seed" in message and "lora.lora_alpha" in message


def test_a_section_built_in_python_is_checked_as_a_file_is():
    with pytest.raises(ConfigError, match=r"train.learning_rate must be in \(0, 1\], got nan"):
        TrainArgs(learning_rate=float("nan"))
    with pytest.raises(ConfigError, match=r"train.seed must be an integer"):
        dataclasses.replace(TrainArgs(), seed=2**32)


def test_values_at_the_edges_of_their_ranges_are_accepted():
    cfg = load_config(
        None,
        [
            "train.seed=0",
            "train.learning_rate=1",
            "train.weight_decay=0",
            "train.max_grad_norm=0",
            "train.warmup_ratio=0",
            "train.early_stopping_patience=0",
            "lora.lora_dropout=0",
            "data.max_length=8",
            "train.seed=4294967295",
        ],
    )
    assert cfg.train.seed == 2**32 - 1 and cfg.train.learning_rate == 1.0


def test_train_refuses_a_bad_number_before_anything_runs(capsys, tmp_path):
    code = main(["train", "--data", str(tmp_path / "none.csv"), "--seed", "-1", "--output-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "train.seed must be" in err
    assert not (tmp_path / "r").exists()


# -- class weights files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "suffix", "shown"),
    [
        ('{"good": Infinity, "bad": 1}', ".json", "inf"),
        ('{"good": NaN}', ".json", "nan"),
        ("good: .inf\n", ".yaml", "inf"),
        ("good: -2\n", ".yaml", "-2"),
        ("good: true\n", ".yaml", "True"),
    ],
)
def test_a_class_weight_that_is_not_finite_and_positive_is_refused(tmp_path, text, suffix, shown):
    path = tmp_path / f"weights{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"the weight of 'good' must be a finite positive number, got {shown}"):
        check_class_weights(str(path))


def test_validate_reads_the_class_weights_file(capsys, tmp_path):
    path = tmp_path / "weights.json"
    path.write_text('{"good": Infinity}')
    code, err = _validate(capsys, "--class-weights", str(path))
    assert code == 2 and err.count("\n") == 1 and "must be a finite positive number, got inf" in err
    path.write_text('{"good": 2.5}')
    assert _validate(capsys, "--class-weights", str(path))[0] == 0


def test_training_refuses_an_infinite_class_weight_before_the_model_loads(tmp_path):
    import numpy as np

    from loratune.task import SINGLE
    from loratune.training.losses import compute_class_weights

    path = tmp_path / "w.yaml"
    path.write_text("good: .inf\n")
    with pytest.raises(ConfigError, match="must be a finite positive number, got inf"):
        compute_class_weights(str(path), np.array([0, 1]), ["bad", "good"], SINGLE)


# -- YAML files: UTF-8, no aliases ---------------------------------------------------------------------------------


def test_a_config_that_is_not_utf8_is_one_line_naming_the_file_and_the_fix(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("data:\n  path: données.csv\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text .*save it as UTF-8"):
        load_config(path)
    code, err = _validate(capsys, "--config", str(path))
    assert code == 2 and err.count("\n") == 1


def test_a_config_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbftrain:\n  seed: 7\n")
    assert load_config(path).train.seed == 7


def _alias_bomb(levels: int = 9) -> str:
    lines = ["data:", "  path: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  subset: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_in_one_line_at_once(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    started = time.perf_counter()
    code, err = _validate(capsys, "--config", str(path))
    elapsed = time.perf_counter() - started
    assert code == 2 and err.count("\n") == 1
    assert "bomb.yaml uses the YAML alias *a0 (line 3)" in err and "write the value out in full" in err
    assert elapsed < 5  # a hang guard, not a timing: expanding 9**9 values takes minutes


def test_a_single_alias_is_refused_too(tmp_path):
    path = tmp_path / "alias.yaml"
    path.write_text("data:\n  path: &p data.csv\n  subset: *p\n")
    with pytest.raises(ConfigError, match=r"uses the YAML alias \*p \(line 3\)"):
        load_config(path)


def test_an_anchor_without_alias_is_harmless(tmp_path):
    path = tmp_path / "anchor.yaml"
    path.write_text("train: &t\n  seed: 3\n")
    assert load_config(path).train.seed == 3


def test_a_saved_config_never_holds_an_alias(tmp_path):
    cfg = load_config(None, ["lora.target_modules=query,value", "lora.modules_to_save=classifier"])
    path = tmp_path / "saved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg and "*" not in cfg.to_yaml()


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [("train:\n  num_epochs: 3\n  num_epochs: 30\n", "num_epochs", 3), ("data: {}\ntrain: {}\ndata: {}\n", "data", 3)],
)
def test_a_key_given_twice_is_refused_instead_of_the_last_winning(tmp_path, text, key, line):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"gives '{key}' twice \(again on line {line}\); keep one"):
        load_config(path)
