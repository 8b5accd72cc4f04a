"""loratune: LoRA fine-tuning of Hugging Face text classifiers, measured before and after.

The public API: `load_config`, `run` (train and measure; returns the run folder), `load_run` (open a finished run
folder: scores, `predict`, `predictor`), `evaluate_run` (score a run again, or on other data), `export_run`,
`export_onnx` (an ONNX graph, int8 optional, checked), `load_onnx` (open one to predict on ONNX Runtime) and `tune`
(search a method's settings with Optuna).
"""

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
    "RunError",
    "RunFolder",
    "evaluate_run",
    "export_onnx",
    "export_run",
    "load_config",
    "load_onnx",
    "load_run",
    "run",
    "tune",
]

# torch and transformers load only when a model is needed, so `import loratune` and config checks stay fast.
_LAZY = {
    "run": "loratune.training.recipe",
    "RunFolder": "loratune.runs.folder",
    "load_run": "loratune.runs.folder",
    "Predictor": "loratune.inference.predictor",
    "evaluate_run": "loratune.scoring.evaluation",
    "export_run": "loratune.export.plain",
    "export_onnx": "loratune.export.onnx_export",
    "load_onnx": "loratune.export.onnx_folder",
    "tune": "loratune.tuning.study",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'loratune' has no attribute {name!r}")
