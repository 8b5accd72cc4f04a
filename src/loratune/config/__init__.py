"""One typed, frozen configuration: dataclass defaults, then a YAML file, then command-line overrides.

The package never imports torch, so `loratune validate` checks a config in milliseconds. `sections` holds the four
sections and the values each setting allows; `loading` builds a `Config` from YAML and overrides.
"""

from loratune.config.loading import (
    SECTIONS,
    Config,
    all_keys,
    example_yaml,
    field_flags,
    load_config,
)
from loratune.config.sections import (
    BEST_METRICS,
    COMPILE_MODES,
    DEVICES,
    PRECISIONS,
    TRACKERS,
    DataArgs,
    LoraArgs,
    ModelArgs,
    TrainArgs,
)

__all__ = [
    "BEST_METRICS",
    "COMPILE_MODES",
    "DEVICES",
    "PRECISIONS",
    "SECTIONS",
    "TRACKERS",
    "Config",
    "DataArgs",
    "LoraArgs",
    "ModelArgs",
    "TrainArgs",
    "all_keys",
    "example_yaml",
    "field_flags",
    "load_config",
]
