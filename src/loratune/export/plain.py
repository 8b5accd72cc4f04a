"""Export a finished run for use without loratune: a plain transformers model (LoRA merged into the weights), or
the PEFT adapter with its tokenizer and labels.

The merged form loads with `transformers.pipeline("text-classification", model=DIR)` alone, no PEFT and no
loratune, and gives the probabilities `loratune predict` gives.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from loratune.config import ADAPTER_METHODS
from loratune.errors import RunError
from loratune.inference.predictor import load_for_inference
from loratune.model.build import load_tokenizer
from loratune.runs import files, weights
from loratune.runs.storage import writable_problem

MERGED_README = """# {name}

A text classifier exported by `loratune export` from the run `{run}` (method `{method}`, base model
`{base}`). {merged}The calibration temperature T = {temperature} is folded into the classifier's last layer
(its weights and bias divided by T), so the probabilities are calibrated. It is a plain transformers model, saved
as fp32 safetensors; it needs neither PEFT nor loratune.

Labels, in id order: {labels}

```python
from transformers import pipeline

classifier = pipeline("text-classification", model="{name}", top_k=None)
classifier("some text", truncation=True)  # texts were cut to {max_length} tokens in training
```
{multi}"""

MULTI_LABEL_NOTE = """
This is a multi-label classifier: a text can carry any number of labels. The pipeline gives each label's
probability (a sigmoid per label, as `config.json`'s `problem_type` says; ask for all of them with `top_k=None`),
and a label applies when its probability reaches its own threshold, chosen on the validation split to maximise
that label's F1. The thresholds are in `{thresholds_file}` and in `config.json` (`label_thresholds`):

```python
import json

thresholds = json.load(open("{name}/{thresholds_file}"))
scores = classifier("some text", truncation=True)[0]
labels = [s["label"] for s in scores if s["score"] >= thresholds[s["label"]]]
```
"""

ADAPTER_README = """# {name}

The PEFT adapter of the loratune run `{run}` (method `{method}`), with its tokenizer and `{labels_file}`. It needs
the base model `{base}` and PEFT; the trained classification head is part of the adapter.

Labels, in id order: {labels}

```python
import json
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

labels = json.load(open("{name}/{labels_file}"))
base = AutoModelForSequenceClassification.from_pretrained(
    "{base}", num_labels=len(labels), id2label=dict(enumerate(labels)),
    label2id={{label: i for i, label in enumerate(labels)}},
)
tokenizer = AutoTokenizer.from_pretrained("{name}")
base.config.pad_token_id = tokenizer.pad_token_id  # GPT-2 and Llama have none of their own
model = PeftModel.from_pretrained(base, "{name}").eval()
```

The probabilities `loratune predict` gives are `softmax(logits / T)` (multi-label runs: `sigmoid(logits / T)`,
each label applying when it reaches its threshold in `{thresholds_file}`), with the temperature T fitted on the
validation split (`temperature` in `{calibration_file}`, {temperature}); it changes no label, only the confidence.
"""


def export_run(
    run_dir: str | Path, output_dir: str | Path, adapter_only: bool = False, overwrite: bool = False
) -> Path:
    """Write a run's model to `output_dir`, atomically (a temporary folder renamed into place).

    Args:
        run_dir: a finished run folder.
        output_dir: the folder to write; it must be missing or empty unless `overwrite`.
        adapter_only: copy the PEFT adapter, tokenizer and labels instead of merging into a full model.
        overwrite: replace a non-empty `output_dir`.

    Returns:
        The folder written.

    Raises:
        RunError: for a missing or damaged run, a non-empty `output_dir`, or a run that cannot take this form
            (mean pooling, which transformers lacks; an adapter export of a run without an adapter).
    """
    run_dir = files.check_run(run_dir)
    output_dir = Path(output_dir)
    if output_dir.resolve() == run_dir.resolve() or run_dir.resolve() in output_dir.resolve().parents:
        raise RunError(f"--output-dir {str(output_dir)!r} is inside the run folder; choose a folder outside it.")
    if output_dir.exists() and not output_dir.is_dir():
        raise RunError(f"--output-dir {str(output_dir)!r} is a file; choose a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise RunError(f"{output_dir} is not empty; choose another --output-dir or pass --overwrite.")
    # before the model loads; the export is written beside output_dir, then renamed to it
    problem = writable_problem(output_dir.resolve().parent, f"--output-dir {output_dir}")
    if problem:
        raise RunError(problem + ".")
    if adapter_only:
        files.save_directory(output_dir, lambda d: _write_adapter(run_dir, d, output_dir.name))
    else:
        files.save_directory(output_dir, lambda d: _write_merged(run_dir, d, output_dir.name))
    return output_dir


def _check_exportable(run_dir: Path, cfg: Any, adapter_only: bool) -> None:
    method = cfg.lora.method
    if method == "none":
        raise RunError(f"{run_dir} trained nothing (method none); there is no model to export.")
    if cfg.model.pooling == "mean":
        raise RunError(
            f"{run_dir} uses mean pooling (model.pooling=mean), which transformers classifiers lack; it cannot be "
            "exported as a plain transformers model. Use loratune predict, or retrain with model.pooling=model."
        )
    if adapter_only and method not in ADAPTER_METHODS:
        raise RunError(f"{run_dir} has no PEFT adapter (method {method}); export it without --adapter-only.")


def _write_merged(run_dir: Path, folder: Path, name: str) -> None:
    _check_exportable(run_dir, files.load_run_config(run_dir), adapter_only=False)
    model, tokenizer, labels, cfg = load_for_inference(run_dir, "cpu", "fp32")
    model = model.float()
    _fold_temperature(model, files.load_temperature(run_dir), len(labels))
    config = model.config
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.num_labels = len(labels)
    config.pad_token_id = tokenizer.pad_token_id
    thresholds = files.load_thresholds(run_dir, labels)
    # the pipeline then applies softmax (single-label) or a sigmoid per label (multi-label), as predict does
    config.problem_type = "multi_label_classification" if thresholds else "single_label_classification"
    if thresholds:
        config.label_thresholds = dict(zip(labels, thresholds, strict=True))
    model.save_pretrained(folder, safe_serialization=True)
    _save_tokenizer(tokenizer, folder, cfg.data.max_length)
    files.write_json(folder / files.LABELS_FILE, labels)
    _copy_thresholds(run_dir, folder)
    files.write_text(folder / "README.md", _readme(MERGED_README, run_dir, name, cfg, labels))


def _fold_temperature(model: Any, temperature: float, num_labels: int) -> None:
    """Scale the classifier's last linear layer by 1 / T, so the exported model's logits are the calibrated ones
    (W x + b) / T and it stays a plain transformers model; labels do not change (T > 0 keeps the argmax)."""
    if temperature == 1.0:
        return
    import torch

    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_labels]
    if not heads:
        raise RunError(f"Found no linear layer with {num_labels} outputs to fold the temperature into.")
    with torch.no_grad():
        heads[-1].weight.div_(temperature)  # modules() walks the model in order: the head's last layer comes last
        if heads[-1].bias is not None:
            heads[-1].bias.div_(temperature)


def _write_adapter(run_dir: Path, folder: Path, name: str) -> None:
    cfg = files.load_run_config(run_dir)
    _check_exportable(run_dir, cfg, adapter_only=True)
    labels = files.load_labels(run_dir)
    weights.check_weights(run_dir, cfg.lora.method, labels)
    adapter = run_dir / files.ADAPTER_DIR
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter / file).is_file():
            raise RunError(f"{adapter / file} is missing; the run folder is damaged.")
        shutil.copy2(adapter / file, folder / file)
    tokenizer = load_tokenizer(str(run_dir / files.TOKENIZER_DIR), cfg.model.trust_remote_code)
    _save_tokenizer(tokenizer, folder, cfg.data.max_length)
    files.write_json(folder / files.LABELS_FILE, labels)
    if (run_dir / files.CALIBRATION_FILE).is_file():
        shutil.copy2(run_dir / files.CALIBRATION_FILE, folder / files.CALIBRATION_FILE)
    _copy_thresholds(run_dir, folder)
    files.write_text(folder / "README.md", _readme(ADAPTER_README, run_dir, name, cfg, labels))


def _copy_thresholds(run_dir: Path, folder: Path) -> None:
    if (run_dir / files.THRESHOLDS_FILE).is_file():
        shutil.copy2(run_dir / files.THRESHOLDS_FILE, folder / files.THRESHOLDS_FILE)


def _save_tokenizer(tokenizer: Any, folder: Path, max_length: int) -> None:
    # Texts were cut to max_length in training and in predict; `truncation=True` in the pipeline then matches.
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(folder)


def _readme(template: str, run_dir: Path, name: str, cfg: Any, labels: list[str]) -> str:
    merged = "The adapter is merged into the base weights. " if cfg.lora.method in ADAPTER_METHODS else ""
    return template.format(
        name=name,
        run=run_dir.name,
        method=cfg.lora.method,
        base=cfg.model.name_or_path,
        merged=merged,
        labels=json.dumps(labels, ensure_ascii=False),
        max_length=cfg.data.max_length,
        labels_file=files.LABELS_FILE,
        calibration_file=files.CALIBRATION_FILE,
        thresholds_file=files.THRESHOLDS_FILE,
        temperature=f"{files.load_temperature(run_dir):.4g}",
        multi=MULTI_LABEL_NOTE.format(name=name, thresholds_file=files.THRESHOLDS_FILE)
        if (run_dir / files.THRESHOLDS_FILE).is_file()
        else "",
    )
