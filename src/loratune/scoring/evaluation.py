"""Scoring a finished run as a library call: `evaluate_run(run)` gives the run's own "after" scores again, or
scores it on other labelled data; `loratune evaluate` prints what it returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from loratune.data.batches import build_eval_loader, tokenize
from loratune.data.splits import load_eval_split, load_run_split
from loratune.schema import Metrics
from loratune.scoring.inference import predict_logits
from loratune.scoring.metrics import metrics_from_logits


@dataclass(frozen=True)
class Evaluation:
    """A run's scores on one split of a dataset."""

    split: str
    metrics: Metrics
    truncated: int  # texts longer than the run's max_length, which the model read only the start of


def evaluate_run(
    run: Any,
    data: str | None = None,
    split: str = "test",
    max_samples: int | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> Evaluation:
    """Score a run (a `runs.folder.RunFolder`, as `loratune.load_run` opens it) with the decisions it saved.

    Args:
        run: the run folder.
        data: a folder, file or hub id of labelled texts; None: the run's own data, carved and subsampled with
            the run's seed as the run did, so `split="test"` gives the run's "after" scores exactly.
        split: train, validation or test.
        max_samples: score at most this many texts, drawn with the run's seed (default: the run's own limit for
            its own data, every text of other data).
        device, precision: as for `RunFolder.inference_model`.

    Raises:
        DataError: for data that cannot be read, lacks the split, or has labels the run was not trained on.
    """
    model = run.inference_model(device, precision)
    cfg, seed = run.config, run.config.train.seed
    if data is None:
        limit = cfg.data.max_eval_samples if max_samples is None else max_samples
        texts = load_run_split(dataclasses.replace(cfg.data, max_eval_samples=limit), split, run.labels, seed)
    else:
        data_args = dataclasses.replace(cfg.data, path=data, max_eval_samples=max_samples)
        texts = load_eval_split(data_args, split, run.labels, task=run.task, seed=seed)
    tokenizer = run.tokenizer
    ds, truncated = tokenize(texts, tokenizer, cfg.data.max_length)
    device_type = next(model.parameters()).device.type
    loader = build_eval_loader(ds, cfg.train.eval_batch_size, tokenizer.pad_token_id, device_type)
    logits, y_true = predict_logits(model, loader, progress=f"scoring {len(ds):,} {split} texts")
    # the decisions the run saved (temperature; thresholds), as its "after" scores applied them
    metrics = metrics_from_logits(logits, y_true, run.labels, run.task, run.temperature, run.thresholds)
    return Evaluation(split, metrics, truncated)
