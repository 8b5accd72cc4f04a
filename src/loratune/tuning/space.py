"""What `loratune tune` searches: each method's parameters (from the method table), each a config key with its
range, overridable from a YAML file; the defaults as a point of the space, so that the first trial is not tuning
at all; and a point of the space as a run's config.

A YAML space file maps config keys to ranges (its keys replace the table's; `null` drops one):

    train.learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}
    lora.r: [4, 8, 16, 32]
    lora.target_modules: [attention, "query,value"]     # attention: the architecture's own choice
    train.weight_decay: null
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratune.config import Config
from loratune.config.safe_yaml import read_yaml
from loratune.errors import ConfigError
from loratune.model.methods import method_of

ALPHA_PER_R = "lora.alpha_per_r"  # lora_alpha as a multiple of r: the scale alpha / r stays comparable across ranks
ATTENTION = "attention"  # lora.target_modules: the architecture's attention projections (loratune's default)


@dataclass(frozen=True)
class Param:
    """One dimension: a float or int range (`log` for a log scale), or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    integer: bool = False

    def suggest(self, trial: Any, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)


_SHARED = {
    "train.warmup_ratio": Param(0.0, 0.2),
    "train.weight_decay": Param(0.0, 0.1),
}
# The settings a method may name in its `tuned` (model.methods): rank and alpha interact, so alpha goes per r.
_METHOD_SETTINGS = {
    "lora.r": Param(choices=(4, 8, 16, 32)),
    ALPHA_PER_R: Param(choices=(1, 2, 4)),
    "lora.lora_dropout": Param(0.0, 0.2),
}
# The learning rate from a tenth of the method's default to three times it (LoRA's default is ten times full
# fine-tuning's, as the LoRA literature advises).
LEARNING_RATE_SPAN = (0.1, 3.0)


def method_space(cfg: Config) -> dict[str, Param]:
    """The method's table: its learning rate range, its own settings (`Method.tuned`), warmup and weight decay.

    Raises:
        ConfigError: for a method that trains nothing.
    """
    method = method_of(cfg.lora.method)
    if not method.trains:
        raise ConfigError(f"lora.method={method.name} trains nothing; there is nothing to tune.")
    low, high = (method.learning_rate * f for f in LEARNING_RATE_SPAN)
    return {
        "train.learning_rate": Param(low, high, log=True),
        **{key: _METHOD_SETTINGS[key] for key in method.tuned},
        **_SHARED,
    }


def search_space(
    cfg: Config, max_epochs: int, space_file: str | Path | None = None, epochs_searched: bool = False
) -> dict[str, Param]:
    """The method's table, epochs 1..`max_epochs` when `epochs_searched`, then the file's entries over it.

    Epochs are searched only without a pruner: with one, every trial runs the same schedule and the pruner decides
    how many epochs it gets (a 1-epoch trial's first epoch ends its learning-rate decay, a 2-epoch trial's is
    halfway, and the pruner would compare the two as equals).

    Raises:
        ConfigError: for a method that trains nothing, an unknown key, a malformed or empty range.
    """
    space = method_space(cfg)
    if epochs_searched and max_epochs > 1:
        space["train.num_epochs"] = Param(1, max_epochs, integer=True)
    if space_file is not None:
        raw = read_yaml(Path(space_file))
        if not isinstance(raw, dict):
            raise ConfigError(f"{space_file} should map config keys to ranges, e.g. lora.r: [4, 8, 16].")
        for key, value in raw.items():
            _check_key(cfg, str(key), space_file)
            if value is None:
                space.pop(str(key), None)
            else:
                space[str(key)] = _param(str(key), value, space_file)
    return space


def _check_key(cfg: Config, key: str, source: Any) -> None:
    if key == ALPHA_PER_R:
        return
    section, _, name = key.partition(".")
    if not hasattr(cfg, section) or name not in type(getattr(cfg, section)).__dataclass_fields__:
        raise ConfigError(f"{source}: {key!r} is not a config key (such as train.learning_rate or lora.r).")


def _param(key: str, value: Any, source: Any) -> Param:
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{source}: {key} has no choices; list at least one.")
        return Param(choices=tuple(value))
    if not isinstance(value, dict) or not {"low", "high"} <= set(value):
        raise ConfigError(f"{source}: {key} should be a list of choices or {{low: ..., high: ...}}.")
    low, high = value["low"], value["high"]
    try:
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key}'s low and high must be numbers, got {low!r} and {high!r}.") from None
    log = bool(value.get("log", False))
    if not low < high or (log and low <= 0):
        raise ConfigError(f"{source}: {key}'s range [{low:g}, {high:g}] is empty{' or not positive' * log}.")
    integer = all(isinstance(value[k], int) for k in ("low", "high")) and not log
    return Param(low, high, log, integer=integer)


def default_point(cfg: Config, space: dict[str, Param]) -> dict[str, Any]:
    """The config's own values as a point of `space` (the study's first trial); each value is included in its
    parameter's choices or range as given, so the defaults are always tried."""
    point = {}
    for key in space:
        if key == ALPHA_PER_R:
            ratio = cfg.lora.lora_alpha / cfg.lora.r
            point[key] = int(ratio) if ratio == int(ratio) else ratio
        elif key == "train.learning_rate":
            point[key] = cfg.train.resolved_learning_rate(cfg.lora.method)
        elif key == "lora.target_modules":
            point[key] = ",".join(cfg.lora.target_modules) if cfg.lora.target_modules else ATTENTION
        else:
            section, _, name = key.partition(".")
            point[key] = getattr(getattr(cfg, section), name)
    return point


def overrides(point: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """A point of the space as config values by key (`lora.alpha_per_r` becomes `lora.lora_alpha`)."""
    values = {k: v for k, v in point.items() if k not in (ALPHA_PER_R, "lora.target_modules")}
    if ALPHA_PER_R in point:
        values["lora.lora_alpha"] = float(point[ALPHA_PER_R]) * float(point.get("lora.r", cfg.lora.r))
    if "lora.target_modules" in point:
        targets = point["lora.target_modules"]
        values["lora.target_modules"] = None if targets == ATTENTION else targets
    return values


def trial_config(cfg: Config, point: dict[str, Any], output_dir: Path, eval_split: str) -> Config:
    """`cfg` at `point` (see `space.overrides`), writing to `output_dir`, measured on `eval_split`."""
    values = {**overrides(point, cfg), "train.output_dir": str(output_dir), "data.eval_split": eval_split}
    values["train.overwrite"] = True
    raw = cfg.to_dict()
    for key, value in values.items():
        section, _, name = key.partition(".")
        raw[section][name] = value
    return Config.from_dict(raw)
