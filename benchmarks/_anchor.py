"""The anchor: PEFT's sequence-classification LoRA recipe with `transformers.Trainer`, timed.

`bench_train.py` runs this file once per anchor variant, each in a fresh process, and parses the last stdout line,
which is one JSON object of results. It follows the PEFT docs' recipe (examples/sequence_classification/LoRA):
tokenise with truncation, pad per batch with `DataCollatorWithPadding`, keep `TrainingArguments` at their defaults
apart from what the benchmark fixes (epochs, batch size, learning rate) and what would only add noise to the timing
(no checkpoints, no logging integrations, no progress bar).

Run by hand:
    HF_HUB_OFFLINE=1 python benchmarks/_anchor.py --data DIR --model MODEL_DIR --epochs 1 --batch-size 32 \
        --learning-rate 5e-4 [--bf16]
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

MAX_LENGTH = 128


def _read_split(path: Path, label2id: dict[str, int] | None = None) -> tuple[Dataset, list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    labels = sorted({row["label"] for row in rows}) if label2id is None else list(label2id)
    label2id = label2id or {name: i for i, name in enumerate(labels)}
    data = {"text": [row["text"] for row in rows], "label": [label2id[row["label"]] for row in rows]}
    return Dataset.from_dict(data), labels


def main(argv: list[str] | None = None) -> int:
    """Train and evaluate one anchor and print its results as one JSON line.

    Args:
        argv: Command-line arguments; `sys.argv[1:]` when None.

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Folder with train.csv and validation.csv.")
    parser.add_argument("--model", required=True, help="Model folder or hub id.")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--bf16", action="store_true", help="TrainingArguments(bf16=True); fp32 otherwise.")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)

    train_ds, labels = _read_split(args.data / "train.csv")
    label2id = {name: i for i, name in enumerate(labels)}
    val_ds, _ = _read_split(args.data / "validation.csv", label2id)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id
    )
    # The PEFT docs' values. target_modules only spells out PEFT's own default for BERT, so the benchmark's
    # "same LoRA layers as loratune" can be read here.
    peft_config = LoraConfig(
        task_type="SEQ_CLS",
        inference_mode=False,
        r=8,
        lora_alpha=16,
        lora_dropout=0.1,
        target_modules=["query", "value"],
    )
    model = get_peft_model(model, peft_config)

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], truncation=True, max_length=MAX_LENGTH)

    train_ds = train_ds.map(tokenize, batched=True, remove_columns=["text"])
    val_ds = val_ds.map(tokenize, batched=True, remove_columns=["text"])
    # Real (non-pad) tokens: the collator pads per batch, so this is what the model must process at the least.
    train_tokens = sum(len(ids) for ids in train_ds["input_ids"]) * args.epochs

    with tempfile.TemporaryDirectory(prefix="loratune-anchor-") as tmp:
        training_args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            bf16=args.bf16,
            # transformers refuses bf16 on a CPU unless told the CPU is meant; the flag also keeps a visible GPU idle.
            use_cpu=args.device == "cpu",
        )
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=train_ds,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start

        start = time.perf_counter()
        prediction = trainer.predict(val_ds)
        eval_seconds = time.perf_counter() - start

    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    predicted = np.argmax(logits, axis=-1)
    accuracy = float(np.mean(predicted == prediction.label_ids))
    result = {
        "precision": "bf16" if args.bf16 else "fp32",
        "device": str(training_args.device),
        "torch_threads": torch.get_num_threads(),
        "train_size": len(train_ds),
        "validation_size": len(val_ds),
        "train_seconds": train_seconds,
        "train_samples_per_s": len(train_ds) * args.epochs / train_seconds,
        "train_tokens_per_s": train_tokens / train_seconds,
        "eval_samples_per_s": len(val_ds) / eval_seconds,
        "val_accuracy": accuracy,
        # Shows at a glance when a short run has collapsed onto one class (accuracy = that class's share).
        "val_predicted_counts": {name: int((predicted == i).sum()) for i, name in enumerate(labels)},
        # ru_maxrss is in KiB on Linux.
        "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
