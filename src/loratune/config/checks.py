"""The range of every number in the config, one rule per numeric field (`NUMBERS`), checked whenever a section is
built: `loratune validate`, `loratune train` and a Python caller refuse the same values, before anything runs.

Every number must also be finite: NaN passes every `<` test that is meant to refuse it, and an infinite learning
rate or weight trains to NaN weights only after the first step.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratune.config.safe_yaml import read_yaml
from loratune.errors import ConfigError, first_line


@dataclass(frozen=True)
class Range:
    """The values a numeric field allows: finite, from `low` to `high` (either may be open or absent)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused
    high_open: bool = False  # high itself is refused
    integer: bool = False
    unit: str = ""
    shown_high: str = ""  # the upper bound as written in messages where its digits say less (2**32)

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (self.integer and not float(value).is_integer()):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """The range in words: 'at least 1', 'a finite number above 0', 'in [0, 1)'."""
        unit = f" {self.unit}" if self.unit else ""
        what = "an integer" if self.integer else "a finite number"
        low = _number(self.low)
        if self.high is None:
            if self.integer and not self.low_open:
                return f"at least {low}{unit}"
            return f"{what} {'above' if self.low_open else 'of at least'} {low}{unit}"
        high = self.shown_high or _number(self.high)
        bounds = f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        return f"{what} in {bounds}{unit}" if self.integer else f"in {bounds}{unit}"


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_SHARE = Range(0.0, 0.5, low_open=True, high_open=True)  # of train carved out for validation or test
_COUNT = Range(1, integer=True)
_PROBABILITY = Range(0.0, 1.0, high_open=True)  # a dropout or a fraction of steps: 1 would leave nothing
_LEARNING_RATE = Range(0.0, 1.0, low_open=True)  # AdamW above 1 moves weights further than they measure
_NON_NEGATIVE = Range(0.0)

# Every int or float field of the config and its range (tests/config/test_numbers_checked.py checks that none
# is missing). Optional fields are checked when set.
NUMBERS: dict[str, Range] = {
    "data.validation_ratio": _SHARE,
    "data.test_ratio": _SHARE,
    "data.max_train_samples": _COUNT,
    "data.max_eval_samples": _COUNT,
    "data.max_length": Range(8, integer=True, unit="tokens"),
    "model.dropout": _PROBABILITY,
    "lora.r": _COUNT,
    "lora.lora_alpha": Range(0.0, low_open=True),
    "lora.lora_dropout": _PROBABILITY,
    "train.num_epochs": _COUNT,
    "train.batch_size": _COUNT,
    "train.eval_batch_size": _COUNT,
    "train.gradient_accumulation_steps": _COUNT,
    "train.learning_rate": _LEARNING_RATE,
    "train.head_learning_rate": _LEARNING_RATE,
    "train.weight_decay": _NON_NEGATIVE,
    "train.warmup_ratio": _PROBABILITY,
    "train.max_grad_norm": _NON_NEGATIVE,
    # numpy's and torch's seeds are 32-bit: -1 or 2**32 fails only when training starts
    "train.seed": Range(0, 2**32, high_open=True, integer=True, shown_high="2**32"),
    "train.early_stopping_patience": Range(0, integer=True),
}


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a config field: its own (`--epochs`), else its name with dashes."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def check_numbers(section: str, values: Any) -> None:
    """Refuse a section whose numbers are out of range, naming each key, its flag, its value and its range.

    Args:
        section: the section's name in the config (data, model, lora, train).
        values: the section (a dataclass instance).

    Raises:
        ConfigError: one sentence per bad number, on one line.
    """
    problems = []
    for f in dataclasses.fields(values):
        key, value = f"{section}.{f.name}", getattr(values, f.name)
        rule = NUMBERS.get(key)
        if rule is not None and value is not None and not rule.allows(value):
            problems.append(f"{key} must be {rule.describe()}, got {value!r} ({flag_of(f)}).")
    if problems:
        raise ConfigError(" ".join(problems))


def read_class_weights(path: Path) -> dict[str, float]:
    """The label -> weight mapping of a `train.class_weights` file (JSON, else YAML), each weight finite and > 0.

    Raises:
        ConfigError: for a missing or unreadable file, one that is no mapping, or a weight that is not a finite
            positive number (an infinite weight turns the loss to NaN at the first step).
    """
    if not path.is_file():
        raise ConfigError(
            f"train.class_weights={str(path)!r} is neither none, balanced nor a file; give a JSON or YAML file "
            "mapping each label to its weight."
        )
    if path.suffix.lower() != ".json":
        given = read_yaml(path)
    else:
        try:
            given = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"Could not read class weights from {path}: {first_line(error)}.") from None
    if not isinstance(given, dict):
        raise ConfigError(f'{path} must map label names to weights, e.g. {{"spam": 5.0, "ham": 1.0}}.')
    weight = Range(0.0, low_open=True)
    for name, value in given.items():
        if not weight.allows(value):
            raise ConfigError(f"{path}: the weight of {str(name)!r} must be a finite positive number, got {value!r}.")
    return {str(name): float(value) for name, value in given.items()}


def check_class_weights(spec: str) -> None:
    """Read a `train.class_weights` file now, so that `loratune validate` refuses what training would.

    Raises:
        ConfigError: as `read_class_weights`.
    """
    if spec not in ("none", "balanced"):
        read_class_weights(Path(spec).expanduser())
