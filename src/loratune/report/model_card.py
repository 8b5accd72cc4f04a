"""The model card of a run: the `README.md` of its adapter folder and of an export, in the Hugging Face format
(YAML metadata, then Markdown), built with `huggingface_hub.ModelCard` so that the hub and its tools read it.

Why written here: PEFT's `save_pretrained` leaves its empty template ("More Information Needed"), the first thing a
user sees when they share the adapter. The run knows everything a card asks for: the base model, task and labels,
data and sizes, the scores before and after with their confidence intervals, and the settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loratune.formatting import count
from loratune.model.methods import method_of
from loratune.model.names import HUB_DEFAULT_MODEL
from loratune.runs import files
from loratune.runs.folder import RunFolder
from loratune.schema import Metrics, RunSummary
from loratune.task import task_of

# Past this many labels the card lists the first ones and says how many there are.
LISTED_LABELS = 50


def model_card(run: RunFolder, library: str, how_to_use: str) -> str:
    """The card's text: metadata for the hub (`library_name` "peft" for an adapter, "transformers" for a merged
    model; `base_model`, `pipeline_tag`, `metrics`, the test scores as `model-index`), then what the model is, how
    to load it (`how_to_use`, Markdown), its results, data, training settings, and its intended use and limits."""
    from huggingface_hub import ModelCard, ModelCardData

    s, cfg = run.summary, run.config
    base = cfg.model.name_or_path or HUB_DEFAULT_MODEL
    data = ModelCardData(
        library_name=library,
        base_model=base if _is_hub_id(base) else None,
        pipeline_tag="text-classification",
        metrics=["accuracy", "f1"],
        tags=["loratune", "text-classification", cfg.lora.method],
        datasets=[cfg.data.path] if cfg.data.path and _is_hub_id(cfg.data.path) else None,
        model_name=run.run_dir.name,
        eval_results=_eval_results(s, run.data_name or "local data"),
    )
    body = "\n\n".join(
        [
            f"# {run.run_dir.name}",
            _overview(run, base),
            "## How to use\n\n" + how_to_use.strip(),
            "## Results\n\n" + _results(s),
            "## Data\n\n" + _data(run),
            "## Training\n\n" + _training(run),
            "## Intended use and limits\n\n" + _limits(run),
        ]
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n"))


def write_adapter_card(run_dir: Path) -> None:
    """Replace PEFT's empty template in the run's adapter folder with the run's card (runs of an adapter only)."""
    run = RunFolder.open(run_dir, finished=False)
    method = run.method
    if not method.adapter or method.saved_in is None:
        return
    folder = run.run_dir / method.saved_in
    usage = adapter_usage(f"{run.run_dir.name}/{method.saved_in}", f"{run.run_dir.name}/{files.TOKENIZER_DIR}", run)
    files.write_text(folder / "README.md", model_card(run, "peft", usage))


def adapter_usage(where: str, tokenizer: str, run: RunFolder) -> str:
    """How to load the adapter in the folder `where` (and the tokenizer in `tokenizer`) with PEFT, and with
    loratune."""
    base = run.config.model.name_or_path or HUB_DEFAULT_MODEL
    return f"""```python
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

labels = {run.labels[:LISTED_LABELS]!r}{" + ..." if len(run.labels) > LISTED_LABELS else ""}
base = AutoModelForSequenceClassification.from_pretrained(
    "{base}", num_labels={len(run.labels)}, id2label=dict(enumerate(labels)),
)
tokenizer = AutoTokenizer.from_pretrained("{tokenizer}")
base.config.pad_token_id = tokenizer.pad_token_id  # GPT-2 and Llama have none of their own
model = PeftModel.from_pretrained(base, "{where}").eval()
```

With loratune, from the run folder: `loratune predict {run.run_dir.name} --text "some text"`. For a plain
`transformers.pipeline` model, merge the adapter with `loratune export {run.run_dir.name} --output-dir DIR`."""


def _is_hub_id(name: str) -> bool:
    return not Path(name).expanduser().exists() and name.count("/") == 1 and not name.startswith((".", "/", "~"))


def _eval_results(s: RunSummary, dataset: str) -> list[Any]:
    from huggingface_hub import EvalResult

    task = task_of(s.task)
    common = {
        "task_type": "text-classification",
        "dataset_type": dataset,
        "dataset_name": dataset,
        "dataset_split": s.eval_split,
    }
    scores = (("accuracy", s.after.accuracy, task.accuracy_name), ("f1", s.after.f1, "macro F1"))
    return [
        EvalResult(**common, metric_type=kind, metric_value=round(value, 4), metric_name=name)
        for kind, value, name in scores
    ]


def _overview(run: RunFolder, base: str) -> str:
    s, task = run.summary, task_of(run.summary.task)
    kind = "a label set per text (multi-label)" if task.needs_thresholds else "one label per text"
    shown = ", ".join(f"`{label}`" for label in run.labels[:LISTED_LABELS])
    more = f" and {count(len(run.labels) - LISTED_LABELS)} more" if len(run.labels) > LISTED_LABELS else ""
    return (
        f"A text classifier fine-tuned with loratune ({method_of(s.method).title}) from `{base}`: {kind}, "
        f"{count(len(run.labels))} labels ({shown}{more})."
    )


def _scores(m: Metrics) -> tuple[str, str]:
    return f"{m.accuracy:.4f}", f"{m.f1:.4f}"


def _interval(bounds: list[float]) -> str:
    return f" [{bounds[0]:.4f}, {bounds[1]:.4f}]" if len(bounds) == 2 else ""


def _results(s: RunSummary) -> str:
    task, sig = task_of(s.task), s.significance
    rows = [
        (
            "before (the base model, untrained head)",
            s.before,
            *((sig.accuracy_before, sig.f1_before) if sig else ([], [])),
        ),
        ("after fine-tuning", s.after, *((sig.accuracy_after, sig.f1_after) if sig else ([], []))),
    ]
    lines = [f"| {s.eval_split} split ({count(s.after.num_samples)} texts) | {task.accuracy_name} | macro F1 |"]
    lines.append("|---|---|---|")
    for name, m, acc, f1 in rows:
        accuracy, f1_score = _scores(m)
        lines.append(f"| {name} | {accuracy}{_interval(acc)} | {f1_score}{_interval(f1)} |")
    note = "Brackets: 95% bootstrap confidence intervals." if sig else ""
    if sig and sig.mcnemar_p is not None:
        note += f" McNemar's exact test of before against after: p = {sig.mcnemar_p:.3g}."
    return "\n".join(lines) + ("\n\n" + note if note else "")


def _data(run: RunFolder) -> str:
    s, cfg = run.summary, run.config
    source = cfg.data.path or (s.data.source if s.data else None) or "unknown"
    d = s.data
    return (
        f"Source: `{source}`. Rows: train {count(d.train_size)}, validation {count(d.validation_size)}, test "
        f"{count(d.test_size)}; texts cut to {cfg.data.max_length} tokens."
    )


def _training(run: RunFolder) -> str:
    s, cfg = run.summary, run.config
    t, lora = cfg.train, cfg.lora
    adapter = (
        f"rank {lora.r}, alpha {lora.lora_alpha}, dropout {lora.lora_dropout}; " if method_of(s.method).adapter else ""
    )
    return (
        f"{method_of(s.method).title}: {adapter}{count(s.trainable_params)} of {count(s.total_params)} parameters "
        f"trained. {len(s.history)} epoch(s) (best: {s.best_epoch}, by {s.best_metric}), batch size {t.batch_size}, "
        f"learning rate {t.learning_rate:g}, warmup ratio {t.warmup_ratio:g}, weight decay {t.weight_decay:g}, "
        f"seed {t.seed}, precision {s.precision} on {s.device}; {s.train_seconds:.0f} s of training."
    )


def _limits(run: RunFolder) -> str:
    task = task_of(run.summary.task)
    decides = (
        "Each label applies when its probability reaches its own threshold (`thresholds.json`), chosen on the "
        "validation split."
        if task.needs_thresholds
        else "Probabilities are calibrated on the validation split (temperature scaling); the label is the most "
        "probable one."
    )
    return (
        f"For texts like those it was trained on, in the labels above; it knows no other label and answers one for "
        f"every text. {decides} Scores come from one test split; expect lower ones on text of another kind, and "
        "check the report (`report.html` in the run folder) for the classes it gets wrong before relying on it."
    )
