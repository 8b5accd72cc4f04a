"""Load a finished run and classify new texts."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loratune.config import ADAPTER_METHODS
from loratune.data.batches import PackedTokens, packed_eval_loader
from loratune.errors import DataError, RunError
from loratune.formatting import NO_LABELS
from loratune.model import hardware
from loratune.quiet import peft_warnings_hidden
from loratune.runs import files, weights
from loratune.schema import SET_SEPARATOR
from loratune.scoring import thresholding
from loratune.scoring.metrics import predict_logits


def load_for_inference(run_dir: str | Path, device: str = "auto", dtype: str = "auto") -> tuple[Any, ...]:
    """A run's model for scoring: the adapter merged into the weights, the whole model cast to `dtype`
    (a precision name: auto, fp32, bf16, fp16).

    Merging makes one matmul per layer instead of base + adapter; a model held in bf16 (rather than autocast)
    casts nothing per batch. On SST-2's 2,693 validation and test sentences, bf16 labelled 2x faster than fp32
    here and changed 3 labels (probabilities by at most 0.02); pass dtype="fp32" for exact scores.

    `auto` is the run's own precision where this device runs it (see `hardware.inference_precision`): the
    precision the run scored its "after" in, so `loratune evaluate` reproduces it.

    Returns:
        (model, tokenizer, labels, cfg), the model in eval mode.
    """
    device = hardware.resolve_device(device)
    trained = files.load_run_config(files.check_run(run_dir)).train.precision
    with peft_warnings_hidden():
        return inference_model(run_dir, device, hardware.inference_precision(dtype, device, trained))


def inference_model(run_dir: str | Path, device: Any, dtype: str, finished: bool = True) -> tuple[Any, ...]:
    """`load_for_inference` with the device (a torch device, or a name such as cuda:1) and precision resolved;
    `finished=False` for the run that is writing the folder."""
    model, tokenizer, labels, cfg = weights.load_model(run_dir, device, finished)
    if cfg.lora.method in ADAPTER_METHODS:
        try:
            model = model.merge_and_unload()  # PEFT folds B @ A (or IA3's scales) into the base weights
        except AttributeError:
            # PEFT 0.21's IA3 unload stops at a BERT pooler kept in modules_to_save; the layers it reached are
            # merged, the rest still apply their scales, so the model computes the same function unmerged.
            pass
    return hardware.prepare_for_inference(model, dtype), tokenizer, labels, cfg


class Predictor:
    """A trained classifier from a run folder, ready to label texts.

    Example:
        >>> Predictor.from_run("runs/sst2").predict(["an utterly charming film"])
        [{'label': 'positive', 'score': 0.97, 'probabilities': {'negative': 0.03, 'positive': 0.97}}]
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        labels: list[str],
        max_length: int,
        batch_size: int = 128,
        temperature: float = 1.0,
        thresholds: list[float] | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.labels = labels
        self.max_length = max_length
        self.batch_size = batch_size
        # Fitted on validation after training (files.CALIBRATION_FILE): logits / T give calibrated probabilities
        # with the same argmax, so labels never change.
        self.temperature = temperature
        # A multi-label run's per-label thresholds (files.THRESHOLDS_FILE), on the calibrated probabilities;
        # None for a single-label run, which predicts the most probable label.
        self.thresholds = thresholds

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", precision: str = "auto") -> Predictor:
        """Load base model + adapter + labels from `run_dir`, ready to label texts (see `load_for_inference`).

        Args:
            run_dir: a finished run folder.
            device: auto, cpu or cuda.
            precision: auto (bf16 where the hardware runs it fast, as in training), fp32 (exact: what an exported
                model gives), bf16 or fp16 (CUDA only).
        """
        model, tokenizer, labels, cfg = load_for_inference(run_dir, device, precision)
        temperature = files.load_temperature(run_dir)
        thresholds = files.load_thresholds(run_dir, labels)
        if cfg.data.task == "multi" and thresholds is None:
            raise RunError(f"{run_dir} is a multi-label run without its {files.THRESHOLDS_FILE}; rerun training.")
        batch = cfg.train.eval_batch_size
        return cls(model, tokenizer, labels, cfg.data.max_length, batch, temperature, thresholds)

    def predict_proba(self, texts: list[str], text_pairs: list[str] | None = None) -> torch.Tensor:
        """Calibrated class probabilities (temperature applied; a sigmoid per label for a multi-label run), shape
        (len(texts), num_labels), in text order."""
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise DataError(f"Got {len(texts)} texts but {len(text_pairs)} text pairs; give one pair per text.")
        args = [texts] if text_pairs is None else [texts, text_pairs]
        encoded = self.tokenizer(*args, truncation=True, max_length=self.max_length, verbose=False)
        packed = PackedTokens.from_encoded(encoded, self.tokenizer.pad_token_id)
        if not len(packed):
            return torch.zeros((0, len(self.labels)))
        # The batches `loratune evaluate` makes (longest first, padded to each batch's longest, sized for the
        # device), scored by the same loop, so a text gets the same probabilities from both, whatever else is in
        # its batch.
        loader = packed_eval_loader(packed, self.batch_size, next(self.model.parameters()).device.type)
        logits = torch.from_numpy(predict_logits(self.model, loader)[0]) / self.temperature
        scores = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        probs = torch.empty_like(scores)
        probs[[i for batch in loader.batch_sampler for i in batch]] = scores
        return probs

    def _label_set(self, row: list[float], decided: Any) -> dict[str, Any]:
        chosen = sorted(np.flatnonzero(decided), key=lambda k: -row[k])
        return {
            "labels": [self.labels[k] for k in chosen],
            "scores": [row[k] for k in chosen],
            "probabilities": dict(zip(self.labels, row, strict=True)),
        }

    def count_truncated(self, texts: list[str], text_pairs: list[str] | None = None) -> int:
        """How many texts (pairs) are longer than `max_length` tokens, so that `predict` reads only their start."""
        over = 0
        for start in range(0, len(texts), 1000):
            args = [texts[start : start + 1000]] + ([text_pairs[start : start + 1000]] if text_pairs else [])
            # verbose=False: no "sequence length is longer than the maximum" warning per long text
            encoded = self.tokenizer(*args, truncation=False, verbose=False)["input_ids"]
            over += sum(len(ids) > self.max_length for ids in encoded)
        return over

    def predict(self, texts: list[str], text_pairs: list[str] | None = None) -> list[dict[str, Any]]:
        """Label, its probability, and every class's probability for each text.

        Multi-label runs give `labels` (every label whose probability reaches its threshold, most probable first;
        possibly none) and their `scores` instead of one `label` and `score`.
        """
        if isinstance(texts, str):
            texts = [texts]
        probs = self.predict_proba(list(texts), text_pairs)
        if self.multi_label:
            decided = thresholding.decide(probs.numpy(), self.thresholds)
            return [self._label_set(row, chosen) for row, chosen in zip(probs.tolist(), decided, strict=True)]
        results = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append(
                {
                    "label": self.labels[best],
                    "score": row[best],
                    "probabilities": dict(zip(self.labels, row, strict=True)),
                }
            )
        return results


def read_texts(path: str | Path, text_column: str | None = None) -> list[str]:
    """Texts from a CSV (column `text` or the only column) or JSONL file (key `text`), or a plain .txt file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Input file {str(path)!r} does not exist; check the path.")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix in (".csv", ".tsv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long texts are valid input (truncated when tokenised)
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = _csv_rows(handle, "\t" if suffix == ".tsv" else ",", path)
    elif suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise DataError(f"Cannot read {path.name}: use a .csv, .tsv, .jsonl or .txt file.")
    if not rows:
        raise DataError(f"{path} has no rows to predict.")
    columns = list(rows[0])
    column = text_column or ("text" if "text" in columns else columns[0] if len(columns) == 1 else None)
    if column is None or column not in columns:
        raise DataError(
            f"{path} has no text column {column or 'text'!r}; its columns are {columns}. Use --text-column."
        )
    return [str(row[column]) for row in rows]


_EXTRA = object()  # DictReader's key for the fields of a row beyond its header


def _csv_rows(handle: Any, delimiter: str, path: Path) -> list[dict[str, Any]]:
    """Rows as dicts; a row wider than the header is an error naming its line, never a silently shortened text,
    except in a one-column file, where an unquoted delimiter is part of the text and the whole line is kept."""
    reader = csv.DictReader(handle, delimiter=delimiter, restkey=_EXTRA)
    rows = []
    for row in reader:
        extra = row.pop(_EXTRA, None)
        if extra:
            columns = reader.fieldnames or []
            if len(columns) != 1:
                raise DataError(
                    f"{path}, line {reader.line_num}: {len(columns) + len(extra)} fields but the header has "
                    f"{len(columns)}; quote texts that hold a {delimiter!r}."
                )
            row[columns[0]] = delimiter.join([row[columns[0]], *extra])
        rows.append(row)
    return rows


def format_prediction(prediction: dict[str, Any]) -> str:
    """'label<TAB>score', or for a multi-label prediction 'label (score), label (score)' ('(none)' for no label)."""
    if "labels" not in prediction:
        return f"{prediction['label']}\t{prediction['score']:.4f}"
    chosen = zip(prediction["labels"], prediction["scores"], strict=True)
    return ", ".join(f"{label} ({score:.4f})" for label, score in chosen) or NO_LABELS


def write_predictions(path: str | Path, texts: list[str], predictions: list[dict[str, Any]]) -> None:
    """Write text, label, score and per-class probabilities as CSV or JSONL (by the file's extension).

    Multi-label predictions give `labels` and `scores` instead: JSON lists in JSONL, and in CSV the names joined
    with "|" (as the training data spells them) and their scores joined likewise.
    """
    path = Path(path)
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    rows = [_row(t, p, jsonl) for t, p in zip(texts, predictions, strict=True)]
    if jsonl:
        files.write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    elif path.suffix.lower() == ".csv":
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["text", "label", "score"])
        writer.writeheader()
        writer.writerows(rows)
        files.write_text(path, buffer.getvalue())
    else:
        raise DataError(f"Cannot write {path.name}: use an output file ending in .csv or .jsonl.")


def _row(text: str, prediction: dict[str, Any], jsonl: bool) -> dict[str, Any]:
    probs = {f"prob_{k}": round(v, 6) for k, v in prediction["probabilities"].items()}
    if "labels" not in prediction:
        return {"text": text, "label": prediction["label"], "score": round(prediction["score"], 6)} | probs
    scores = [round(s, 6) for s in prediction["scores"]]
    if jsonl:
        return {"text": text, "labels": prediction["labels"], "scores": scores} | probs
    joined = {"labels": SET_SEPARATOR.join(prediction["labels"]), "scores": SET_SEPARATOR.join(map(str, scores))}
    return {"text": text} | joined | probs
