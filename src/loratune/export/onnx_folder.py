"""Scoring with ONNX Runtime: an ONNX export folder (`loratune export --format onnx`) opened and checked, and its
graph behind the interface the PyTorch scoring loop calls, so `loratune predict` and `serve` batch, decide and
answer exactly as they do for a run folder (`open_scorer` picks one or the other by `--backend`)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from loratune.errors import ConfigError, RunError
from loratune.export.onnx_graph import require_onnx
from loratune.runs import files
from loratune.runs.integrity import sha256_file
from loratune.task import task_of

EXPORT_FILE = "export.json"  # what the export holds and how it scored (`export.onnx_export`)
ONNX_FORMAT = "onnx"


def open_scorer(path: str | Path, backend: str = "auto", trust_unverified: bool = False) -> Any:
    """A run folder (`RunFolder`, scored by PyTorch) or an ONNX export (`OnnxExport`, by ONNX Runtime), as
    `backend` asks: auto takes the folder for what it is.

    Raises:
        ConfigError: for a backend the folder cannot run.
        RunError: for a damaged folder.
    """
    from loratune.runs.folder import RunFolder

    exported = is_onnx_export(path)
    if backend == "torch" and exported:
        raise ConfigError(f"{path} is an ONNX export; use --backend onnx (or auto), or give its run folder for torch.")
    if backend == "onnx" and not exported:
        raise ConfigError(
            f"{path} is not an ONNX export; make one with loratune export {path} --format onnx --quantize int8 "
            "--output-dir DIR and give DIR (or use --backend torch)."
        )
    return OnnxExport.open(path) if exported else RunFolder.open(path, trust_unverified=trust_unverified)


def is_onnx_export(folder: str | Path) -> bool:
    """Whether `folder` is an ONNX export (its `export.json` says so)."""
    record = Path(folder) / EXPORT_FILE
    if not record.is_file():
        return False
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("format") == ONNX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class OnnxClassifier(torch.nn.Module):
    """An ONNX Runtime session called as a transformers classifier: `model(**batch).logits`, (batch, seq_len)
    token tensors -> (batch, num_labels) float32 logits.

    A torch Module only so that `scoring.inference.predict_logits` (which the PyTorch path uses) runs it
    unchanged: the batches, their order and the progress are then the ones `loratune evaluate` makes.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        require_onnx()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        # Where `predict_logits` looks for the device to move batches to: ONNX Runtime reads CPU arrays.
        self.register_parameter("_cpu", torch.nn.Parameter(torch.empty(0), requires_grad=False))

    def forward(self, **batch: torch.Tensor) -> Any:
        ids = batch["input_ids"]
        feed = {
            name: (batch[name] if name in batch else torch.zeros_like(ids)).numpy().astype(np.int64, copy=False)
            for name in self.input_names
        }
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(None, feed)[0]))


class OnnxExport:
    """An ONNX export folder: the graph (`model.onnx`, checked against its sha256 in `export.json`), the run's
    tokenizer, labels, thresholds and config; the graph's logits are already divided by the run's temperature.

    It has what `inference.predictor.Predictor` reads of a run folder, so `OnnxExport.open(DIR).predictor()`
    predicts as `RunFolder.predictor()` does.
    """

    temperature = 1.0  # folded into the graph

    def __init__(self, folder: Path, record: dict[str, Any]) -> None:
        from loratune.config import load_config
        from loratune.formatting import short_name
        from loratune.model.methods import method_of

        self.folder = self.run_dir = folder
        self.record = record
        self.config = load_config(str(folder / files.CONFIG_FILE))
        self.method = method_of(self.config.lora.method)
        self.model_name = f"{short_name(self.config.model.name_or_path)} (ONNX)"
        self.precision = record["default_precision"]
        self.labels: list[str] = list(record["labels"])
        self.task = task_of(record["task"])
        self.thresholds: list[float] | None = record.get("thresholds")
        self.model_file = record["default"]

    @classmethod
    def open(cls, folder: str | Path) -> OnnxExport:
        """Raises RunError for a folder that is not a whole ONNX export."""
        folder = Path(folder)
        if not is_onnx_export(folder):
            raise RunError(
                f"{folder} is not an ONNX export (no {EXPORT_FILE}); make one with loratune export RUN "
                f"--format onnx --output-dir {folder}."
            )
        record = files.read_json(folder / EXPORT_FILE)
        try:
            export = cls(folder, record)
        except (KeyError, TypeError, ValueError) as error:
            raise RunError(f"{folder / EXPORT_FILE} is damaged ({error}); export the run again.") from None
        return export

    @functools.cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.folder))

    def model(self, name: str | None = None) -> OnnxClassifier:
        """The session on `name` (default: the export's default graph), its bytes checked first.

        Raises:
            RunError: for a graph that is missing or whose bytes changed since the export.
        """
        name = name or self.model_file
        path = self.folder / name
        expected = self.record.get("files", {}).get(name, {}).get("sha256")
        if not path.is_file() or expected is None:
            raise RunError(f"{path} is missing from the export; export the run again.")
        if sha256_file(path) != expected:
            raise RunError(f"{path} has changed since it was exported (checksum differs); export the run again.")
        return OnnxClassifier(path)

    def predictor(self, name: str | None = None) -> Any:
        """A `Predictor` on the default graph (or `name`)."""
        from loratune.inference.predictor import Predictor

        return Predictor(self.model(name), self)


def load_onnx(folder: str | Path) -> OnnxExport:
    """Open an ONNX export to predict with (`load_onnx(DIR).predictor().predict(texts)`), checked as `OnnxExport.open`
    checks it."""
    return OnnxExport.open(folder)
