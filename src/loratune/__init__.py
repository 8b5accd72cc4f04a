"""loratune: LoRA fine-tuning of Hugging Face text classifiers, measured before and after."""

from loratune.config import Config, load_config
from loratune.errors import ConfigError, DataError, LoratuneError, ModelError, RunError

__version__ = "0.1.0"
__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "LoratuneError",
    "ModelError",
    "Predictor",
    "Run",
    "RunError",
    "load_config",
    "load_run",
    "run",
]


def __getattr__(name: str):
    # torch and transformers load only when a model is needed, so `import loratune` and config checks stay fast.
    if name == "run":
        from loratune.training.recipe import run

        return run
    if name in ("Run", "load_run"):
        from loratune.runs import folder

        return getattr(folder, name)
    if name == "Predictor":
        from loratune.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'loratune' has no attribute {name!r}")
