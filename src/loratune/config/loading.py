"""One typed, frozen `Config` built from dataclass defaults, then a YAML file, then command-line overrides; the
only place strings become values; the example YAML and the command-line flags, generated from the help texts."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loratune.config.checks import flag_of
from loratune.config.safe_yaml import read_yaml
from loratune.config.sections import DataArgs, LoraArgs, ModelArgs, TrainArgs
from loratune.errors import ConfigError

SECTIONS: dict[str, type] = {"data": DataArgs, "model": ModelArgs, "lora": LoraArgs, "train": TrainArgs}


@dataclass(frozen=True)
class Config:
    """The whole run configuration, one section per stage."""

    data: DataArgs = field(default_factory=DataArgs)
    model: ModelArgs = field(default_factory=ModelArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    train: TrainArgs = field(default_factory=TrainArgs)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Config:
        """Build a validated config from nested dicts (YAML) whose leaves may be strings.

        Raises:
            ConfigError: listing every unknown key and bad value at once.
        """
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"A config must be a mapping of sections ({', '.join(SECTIONS)}), got {raw!r}.")
        problems: list[str] = []
        sections: dict[str, Any] = {}
        for key in raw:
            if key not in SECTIONS:
                problems.append(_unknown(key, list(SECTIONS)))
        for name, section_cls in SECTIONS.items():
            values = raw.get(name) or {}
            if not isinstance(values, dict):
                problems.append(f"Section '{name}' must be a mapping, got {values!r}.")
                continue
            hints = typing.get_type_hints(section_cls)
            kwargs = {}
            for key, value in values.items():
                if key not in hints:
                    problems.append(_unknown(f"{name}.{key}", [f"{name}.{f}" for f in hints]))
                    continue
                try:
                    kwargs[key] = _convert(value, hints[key], f"{name}.{key}")
                except ConfigError as error:
                    problems.append(str(error))
            try:
                sections[name] = section_cls(**kwargs)
            except ConfigError as error:
                problems.append(str(error))
        if problems:
            raise ConfigError(" ".join(problems))
        return cls(**sections)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dicts, ready for YAML."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The config as YAML that `load_config` reads back to an equal config (which refuses aliases)."""
        return yaml.dump(self.to_dict(), Dumper=_NoAliasDumper, sort_keys=False)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a value met twice in full, never as an alias, which `load_config` would refuse."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def all_keys() -> list[str]:
    """Every valid dotted key, e.g. 'train.learning_rate'."""
    return [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _unknown(key: str, valid: list[str]) -> str:
    section, _, name = key.rpartition(".")
    # Abbreviations first ('train.lr' -> 'train.learning_rate'), then spelling ('train.learning_rat').
    close = [v for v in valid if name and "".join(w[0] for w in v.rpartition(".")[2].split("_")) == name]
    close = close or difflib.get_close_matches(key, valid, n=1, cutoff=0.75)
    close = close or difflib.get_close_matches(name, [v.rpartition(".")[2] for v in valid], n=1, cutoff=0.6)
    close = [next(v for v in valid if v.endswith(c)) for c in close] if close and section else close
    hint = f" Did you mean '{close[0]}'?" if close else f" Valid keys: {', '.join(valid)}."
    return f"Unknown key '{key}'.{hint}"


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's type; the only place strings become values."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in args if a is not type(None))
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key} needs a value.")
    if isinstance(value, bool) and annotation in (int, float):
        raise ConfigError(f"{key}={value!r} is not a valid {annotation.__name__}.")
    try:
        if typing.get_origin(annotation) is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            return [str(item).strip() for item in items if str(item).strip()]
        if annotation is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("true", "yes", "1", "on"):
                return True
            if text in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if annotation is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int of float("inf") or of 1e400
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"{key}={value!r} is not a valid {name}.") from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """Read a YAML config (optional) and apply overrides; later sources win.

    Args:
        path: YAML file with sections data, model, lora, train.
        overrides: `{"train.learning_rate": "3e-4"}` or `["train.learning_rate=3e-4", ...]`.

    Raises:
        ConfigError: for a missing file, a file that is not UTF-8, bad YAML or a YAML alias, unknown keys, or bad
            values (numbers out of range: `config.checks.NUMBERS`).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist; check the path.")
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of sections ({', '.join(SECTIONS)}).")
    for key, value in _parse_overrides(overrides).items():
        section, _, name = key.partition(".")
        if not name:
            raise ConfigError(f"Override '{key}' needs a section, e.g. 'train.{key}'. {_unknown(key, all_keys())}")
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"Section '{section}' must be a mapping.")
        target[name] = value
    return Config.from_dict(raw)


def _parse_overrides(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"Override {item!r} must look like key=value, e.g. train.learning_rate=3e-4.")
        parsed[key.strip()] = value.strip()
    return parsed


def example_yaml() -> str:
    """Every option with its default and help text, as a YAML file to copy and edit."""
    lines = ["# loratune config: every option with its default. Later sources win: these defaults, this file,"]
    lines.append("# then command-line flags and key=value overrides.")
    for name, cls in SECTIONS.items():
        lines.append(f"{name}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"  # {f.metadata['help']}")
            lines.append(f"  {f.name}: {value}")
    return "\n".join(lines) + "\n"


def field_flags() -> list[tuple[str, str, dataclasses.Field]]:
    """(flag, dotted key, field) for every config field, for building the CLI from the help texts."""
    flags = []
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            flags.append((flag_of(f), f"{name}.{f.name}", f))
    return flags
