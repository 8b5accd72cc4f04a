"""`loratune export RUN --format onnx [--quantize int8]`: a folder that predicts without PyTorch or loratune, and
the evidence that it predicts what the run does.

The folder holds the graph (`model.onnx`; with int8, the fp32 graph too as `model_fp32.onnx`), the run's tokenizer,
labels, thresholds and config, and `export.json`: the task, the inputs, each file's size and sha256, and the run's
validation and test splits scored by the PyTorch fp32 model, the fp32 graph and the int8 graph (accuracy, macro-F1,
the largest logit difference, how often the decisions agree). An int8 graph that loses more than `INT8_TOLERANCE`
of accuracy or macro-F1 on either split against PyTorch is not made the default (`force` keeps it anyway).
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from loratune.errors import RunError
from loratune.export.onnx_folder import EXPORT_FILE, ONNX_FORMAT, OnnxClassifier
from loratune.export.onnx_graph import optimise_graph, quantize_graph, require_onnx, write_graph
from loratune.runs import files
from loratune.runs.integrity import sha256_file

DEFAULT_FILE = "model.onnx"
FP32_FILE = "model_fp32.onnx"
INT8_TOLERANCE = 0.01  # one point of accuracy or macro-F1
CHECKED_SPLITS = ("validation", "test")
QUANTIZATIONS = ("int8",)


def export_onnx(
    run: str | Path | Any,
    output_dir: str | Path,
    quantize: str | None = None,
    force: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export a finished run as an ONNX folder (see the module), written atomically.

    Args:
        run: a finished run folder (or its path).
        output_dir: the folder to write; it must be missing or empty, or with `overwrite` an earlier export.
        quantize: None for the fp32 graph alone, "int8" for dynamic int8 quantisation as well.
        force: make the int8 graph the default even when it loses more than `INT8_TOLERANCE`.
        overwrite: replace an earlier export in `output_dir`.

    Returns:
        The export's `export.json` record.

    Raises:
        ConfigError: when the `onnx` extra is not installed.
        RunError: for a missing or damaged run, a run with no model, an unknown `quantize`, or an `output_dir`
            that may not be written.
        DataError: when the run's data, needed to check the export, is gone.
    """
    from loratune.export.plain import save_export
    from loratune.runs.folder import RunFolder

    require_onnx()
    run = run if isinstance(run, RunFolder) else RunFolder.open(run)
    check_onnx_exportable(run, quantize)
    written: dict[str, Any] = {}
    name = Path(output_dir).name

    def write(folder: Path) -> None:
        written.update(write_onnx(run, folder, quantize, force, name))

    save_export(run, output_dir, overwrite, write)
    return written


def write_onnx(run: Any, folder: Path, quantize: str | None, force: bool, name: str) -> dict[str, Any]:
    """Write the export of `run` into the empty `folder` (to be renamed `name`); -> its `export.json` record."""
    require_onnx()
    model = run.inference_model("cpu", "fp32").float().eval()
    with tempfile.TemporaryDirectory(prefix="loratune-onnx-") as scratch:
        fp32 = Path(scratch) / FP32_FILE
        inputs = write_graph(model, run.tokenizer, run.temperature, fp32)
        fused = optimise_graph(fp32, model.config)
        graphs = {"onnx_fp32": fp32}
        if quantize == "int8":
            graphs["onnx_int8"] = Path(scratch) / "model_int8.onnx"
            quantize_graph(fp32, graphs["onnx_int8"])
        checks = score_graphs(run, model, graphs)
        problem = int8_problem(checks) if quantize else None
        default = "onnx_int8" if quantize and (problem is None or force) else "onnx_fp32"
        (folder / DEFAULT_FILE).write_bytes(graphs[default].read_bytes())
        if default == "onnx_int8":
            (folder / FP32_FILE).write_bytes(fp32.read_bytes())
    tokenizer = run.tokenizer
    tokenizer.model_max_length = run.config.data.max_length  # truncation=True then cuts where training did
    tokenizer.save_pretrained(folder)
    files.write_json(folder / files.LABELS_FILE, run.labels)
    files.write_text(folder / files.CONFIG_FILE, run.config_text)
    written = [DEFAULT_FILE] + ([FP32_FILE] if default == "onnx_int8" else [])
    record = {
        "format": ONNX_FORMAT,
        "run": str(run.run_dir.resolve()),
        "task": run.task.name,
        "labels": run.labels,
        "thresholds": run.thresholds,
        "max_length": run.config.data.max_length,
        "pad_token_id": tokenizer.pad_token_id,
        "inputs": inputs,
        "temperature_folded": run.temperature,
        "default": DEFAULT_FILE,
        "default_precision": default.removeprefix("onnx_"),
        "quantize": quantize,
        "int8_problem": problem,
        "forced": bool(force and problem),
        "transformer_fusions": fused,
        "files": {file: _describe(folder / file, file, default) for file in written},
        "pytorch_fp32_weights_bytes": sum(p.numel() * 4 for p in model.parameters()),
        "checks": checks,
        "versions": _versions(),
    }
    files.write_json(folder / EXPORT_FILE, record)
    files.write_text(folder / "README.md", _readme(run, name, record))
    return record


README = """The run's classifier as an ONNX graph (`{default}`, {precision}{fp32_note}), for ONNX Runtime without
PyTorch or loratune. Its outputs are the calibrated logits (the run's temperature T = {temperature} divided in):
{activation}. Texts were cut to {max_length} tokens in training; cut them the same way. `export.json` records how
the graph scored on the run's validation and test splits against the PyTorch model.

```python
import json
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

meta = json.load(open("{name}/export.json"))
tokenizer = Tokenizer.from_file("{name}/tokenizer.json")
tokenizer.enable_truncation(meta["max_length"])
tokenizer.enable_padding(pad_id=meta["pad_token_id"])
session = ort.InferenceSession("{name}/model.onnx")
encoded = tokenizer.encode_batch(["some text", "another text"])
fields = {{"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}}
feed = {{k: np.array([getattr(e, fields[k]) for e in encoded], dtype=np.int64) for k in meta["inputs"]}}
logits = session.run(None, feed)[0]
{decide}
```
"""

_DECIDE = {
    "single": 'labels = [meta["labels"][i] for i in logits.argmax(axis=1)]',
    "multi": (
        "probs = 1 / (1 + np.exp(-logits))\n"
        'labels = [[meta["labels"][i] for i in np.argsort(-row) if row[i] >= meta["thresholds"][i]] for row in probs]'
    ),
}
_ACTIVATION = {
    "single": "a softmax gives the probabilities, the most probable label is the answer",
    "multi": "a sigmoid per label gives the probabilities, and a label applies when its probability reaches its "
    "threshold (`thresholds` in `export.json`)",
}


def _readme(run: Any, name: str, record: dict[str, Any]) -> str:
    from loratune.report.model_card import model_card

    text = README.format(
        default=DEFAULT_FILE,
        precision=record["default_precision"],
        fp32_note=f"; the fp32 graph is `{FP32_FILE}`" if FP32_FILE in record["files"] else "",
        temperature=f"{run.temperature:.4g}",
        activation=_ACTIVATION[run.task.name],
        max_length=run.config.data.max_length,
        name=name,
        decide=_DECIDE[run.task.name],
    )
    return model_card(run, "onnx", text)


def _describe(path: Path, name: str, default: str) -> dict[str, Any]:
    precision = default.removeprefix("onnx_") if name == DEFAULT_FILE else "fp32"
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path), "precision": precision}


def score_graphs(run: Any, model: Any, graphs: dict[str, Path]) -> dict[str, Any]:
    """Each checked split of the run scored by the PyTorch fp32 `model` and by each graph, in the same batches:
    accuracy, macro-F1 (multi-label: micro-F1 too), and per graph the largest difference of its logits from the
    calibrated PyTorch logits and the share of texts whose decision agrees."""
    from loratune.data.batches import build_eval_loader, tokenize
    from loratune.data.splits import load_run_split
    from loratune.scoring.inference import predict_logits

    cfg, task, checks = run.config, run.task, {}
    sessions = {name: OnnxClassifier(path) for name, path in graphs.items()}
    for split in CHECKED_SPLITS:
        data = load_run_split(cfg.data, split, run.labels, cfg.train.seed)
        ds, _ = tokenize(data, run.tokenizer, cfg.data.max_length)
        loader = build_eval_loader(ds, cfg.train.eval_batch_size, run.tokenizer.pad_token_id, "cpu")
        reference, y_true = predict_logits(model, loader, progress=f"checking the export on {len(ds):,} {split} texts")
        reference = reference / run.temperature
        decided = task.decide(task.probabilities(reference), run.thresholds)
        scores = {"texts": len(ds), "pytorch_fp32": _scores(run, reference, y_true)}
        for name, session in sessions.items():
            logits, _ = predict_logits(session, loader)
            scores[name] = _scores(run, logits, y_true)
            scores[name]["max_logit_diff"] = float(np.abs(logits - reference).max()) if len(ds) else 0.0
            agree = task.decide(task.probabilities(logits), run.thresholds) == decided
            scores[name]["agreement"] = float(agree.reshape(len(ds), -1).all(axis=1).mean()) if len(ds) else 1.0
        checks[split] = scores
    return checks


def _scores(run: Any, logits: np.ndarray, y_true: np.ndarray) -> dict[str, float | None]:
    from loratune.scoring.metrics import metrics_from_logits

    metrics = metrics_from_logits(logits, y_true, run.labels, run.task, 1.0, run.thresholds)
    return {"accuracy": metrics.accuracy, "f1": metrics.f1, "micro_f1": metrics.micro_f1}


def int8_problem(checks: dict[str, Any]) -> str | None:
    """What the int8 graph loses beyond `INT8_TOLERANCE` against PyTorch fp32, in words; None when nothing."""
    losses = []
    for split, scores in checks.items():
        for metric, name in (("accuracy", "accuracy"), ("f1", "macro-F1")):
            before, after = scores["pytorch_fp32"][metric], scores["onnx_int8"][metric]
            if before - after > INT8_TOLERANCE:
                losses.append(f"{split} {name} {before:.4f} -> {after:.4f}")
    return "; ".join(losses) or None


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def check_onnx_exportable(run: Any, quantize: str | None) -> None:
    """Raises RunError for a run with no model of its own to export, or an unknown quantisation."""
    if not run.method.trains:
        raise RunError(f"{run.run_dir} trained nothing (method {run.method.name}); there is no model to export.")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise RunError(f"--quantize {quantize!r} is not one of {', '.join(QUANTIZATIONS)}.")
