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

from loratune.errors import RunError
from loratune.report.model_card import model_card
from loratune.runs import files, weights
from loratune.runs.destination import check_destination, run_inputs
from loratune.runs.folder import RunFolder
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
and a label applies when its probability reaches its own threshold, chosen on the validation split (each label's
F1-best threshold, pulled toward one shared threshold the fewer examples the label has). The thresholds are in
`{thresholds_file}` and in `config.json` (`label_thresholds`):

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
    run: str | Path | RunFolder, output_dir: str | Path, adapter_only: bool = False, overwrite: bool = False
) -> Path:
    """Write a run's model to `output_dir`, atomically (a temporary folder beside it, renamed into place).

    Args:
        run: a finished run folder (or its path).
        output_dir: the folder to write; it must be missing or empty, or with `overwrite` an earlier export.
        adapter_only: copy the PEFT adapter, tokenizer and labels instead of merging into a full model.
        overwrite: replace an earlier export in `output_dir` (never a folder holding anything else).

    Returns:
        The folder written.

    Raises:
        RunError: for a missing or damaged run, an `output_dir` that may not be written (see
            `runs.destination.check_destination`), or a run that cannot take this form (mean pooling, which
            transformers lacks; an adapter export of a run without an adapter).
    """
    run = run if isinstance(run, RunFolder) else RunFolder.open(run)
    _check_exportable(run, adapter_only)
    write = _write_adapter if adapter_only else _write_merged
    return save_export(run, output_dir, overwrite, lambda folder: write(run, folder, Path(output_dir).name))


def save_export(run: RunFolder, output_dir: str | Path, overwrite: bool, write: Any) -> Path:
    """Check that `output_dir` may be written (`runs.destination.check_destination`, before any model loads), then
    `write(folder)` into a temporary folder beside it, marked as an export and renamed into place.

    Raises:
        RunError: for an `output_dir` that may not be written.
    """
    output_dir = Path(output_dir)
    inputs = {"the run folder": run.run_dir, **run_inputs(run.config)}
    check_destination(output_dir, "--output-dir", "export", inputs, overwrite)
    # before the model loads; the export is written beside output_dir, then renamed to it
    problem = writable_problem(output_dir.resolve().parent, f"--output-dir {output_dir}")
    if problem:
        raise RunError(problem + ".")

    def write_marked(folder: Path) -> None:
        write(folder)
        _mark_export(run, folder)

    files.save_directory(output_dir, write_marked)
    return output_dir


def _mark_export(run: RunFolder, folder: Path) -> None:
    """`files.EXPORT_MARKER`, written last: the run exported and every name written, so that `--overwrite` later
    knows this folder for an export and replaces it only while it holds nothing else."""
    names = sorted(entry.name for entry in folder.iterdir())
    files.write_json(folder / files.EXPORT_MARKER, {"run": str(run.run_dir.resolve()), "files": names})


def _check_exportable(run: RunFolder, adapter_only: bool) -> None:
    method = run.method
    if not method.trains:
        raise RunError(f"{run.run_dir} trained nothing (method {method.name}); there is no model to export.")
    if run.config.model.pooling == "mean":
        raise RunError(
            f"{run.run_dir} uses mean pooling (model.pooling=mean), which transformers classifiers lack; it cannot be "
            "exported as a plain transformers model. Use loratune predict, or retrain with model.pooling=model."
        )
    if adapter_only and not method.adapter:
        raise RunError(f"{run.run_dir} has no PEFT adapter (method {method.name}); export it without --adapter-only.")


def _write_merged(run: RunFolder, folder: Path, name: str) -> None:
    labels, tokenizer = run.labels, run.tokenizer
    model = run.inference_model("cpu", "fp32").float()
    _fold_temperature(model, run.temperature, len(labels))
    config = model.config
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.num_labels = len(labels)
    config.pad_token_id = tokenizer.pad_token_id
    # the pipeline then applies the task's activation: softmax, or a sigmoid per label
    config.problem_type = _PROBLEM_TYPES[run.task.name]
    if run.thresholds:
        config.label_thresholds = dict(zip(labels, run.thresholds, strict=True))
    model.save_pretrained(folder, safe_serialization=True)
    _save_tokenizer(tokenizer, folder, run.config.data.max_length)
    files.write_json(folder / files.LABELS_FILE, labels)
    _copy_thresholds(run.run_dir, folder)
    files.write_text(folder / "README.md", _readme(MERGED_README, run, name, "transformers"))


# transformers' name of each task, which `pipeline` reads to pick its activation.
_PROBLEM_TYPES = {"single": "single_label_classification", "multi": "multi_label_classification"}


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


def _write_adapter(run: RunFolder, folder: Path, name: str) -> None:
    weights.check_weights(run.run_dir, run.method, run.labels, run.trust_unverified)
    adapter = run.run_dir / run.method.saved_in
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter / file).is_file():
            raise RunError(f"{adapter / file} is missing; the run folder is damaged.")
        shutil.copy2(adapter / file, folder / file)
    _save_tokenizer(run.tokenizer, folder, run.config.data.max_length)
    files.write_json(folder / files.LABELS_FILE, run.labels)
    if (run.run_dir / files.CALIBRATION_FILE).is_file():
        shutil.copy2(run.run_dir / files.CALIBRATION_FILE, folder / files.CALIBRATION_FILE)
    _copy_thresholds(run.run_dir, folder)
    files.write_text(folder / "README.md", _readme(ADAPTER_README, run, name, "peft"))


def _copy_thresholds(run_dir: Path, folder: Path) -> None:
    if (run_dir / files.THRESHOLDS_FILE).is_file():
        shutil.copy2(run_dir / files.THRESHOLDS_FILE, folder / files.THRESHOLDS_FILE)


def _save_tokenizer(tokenizer: Any, folder: Path, max_length: int) -> None:
    # Texts were cut to max_length in training and in predict; `truncation=True` in the pipeline then matches.
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(folder)


def _readme(template: str, run: RunFolder, name: str, library: str) -> str:
    """The export's model card (`report.model_card`), with the template's text as how to use it."""
    cfg = run.config
    text = template.format(
        name=name,
        run=run.run_dir.name,
        method=cfg.lora.method,
        base=cfg.model.name_or_path,
        merged="The adapter is merged into the base weights. " if run.method.adapter else "",
        labels=json.dumps(run.labels, ensure_ascii=False),
        max_length=cfg.data.max_length,
        labels_file=files.LABELS_FILE,
        calibration_file=files.CALIBRATION_FILE,
        thresholds_file=files.THRESHOLDS_FILE,
        temperature=f"{run.temperature:.4g}",
        multi=MULTI_LABEL_NOTE.format(name=name, thresholds_file=files.THRESHOLDS_FILE) if run.thresholds else "",
    )
    return model_card(run, library, text.split("\n", 1)[1])  # the card has its own title
