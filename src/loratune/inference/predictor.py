"""Label new texts with a trained model: probabilities and decisions as the run's task makes them."""

from __future__ import annotations

from typing import Any

import torch

from loratune.data.batches import PackedTokens, bounded_columns, packed_eval_loader
from loratune.errors import DataError
from loratune.scoring.inference import predict_logits


class Predictor:
    """A trained classifier ready to label texts: a model prepared for inference and the run folder it came from
    (`runs.folder.RunFolder`, which makes one: `loratune.load_run(RUN).predictor()`).

    Example:
        >>> loratune.load_run("runs/sst2").predictor().predict(["an utterly charming film"])
        [{'label': 'positive', 'score': 0.97, 'probabilities': {'negative': 0.03, 'positive': 0.97}}]
    """

    def __init__(self, model: Any, run: Any, batch_size: int | None = None) -> None:
        self.model = model
        self.tokenizer = run.tokenizer
        self.labels = run.labels
        self.task = run.task
        self.max_length = run.config.data.max_length
        self.batch_size = batch_size or run.config.train.eval_batch_size
        # Fitted on validation after training: logits / T give calibrated probabilities with the same argmax, so
        # labels never change.
        self.temperature = run.temperature
        # Per-label thresholds on the calibrated probabilities, for a task that decides with them; else None.
        self.thresholds = run.thresholds
        # The name of a progress bar over many texts (`loratune predict` sets it); None: silent.
        self.progress: str | None = None
        # Multi-label: give a text that no label reaches its threshold its most probable label (`--at-least-one`).
        self.at_least_one = False

    def predict_proba(self, texts: list[str], text_pairs: list[str] | None = None) -> torch.Tensor:
        """Calibrated class probabilities (temperature applied; a sigmoid per label for a multi-label run), shape
        (len(texts), num_labels), in text order."""
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise DataError(f"Got {len(texts)} texts but {len(text_pairs)} text pairs; give one pair per text.")
        args = bounded_columns([texts] if text_pairs is None else [texts, text_pairs], self.max_length)[0]
        encoded = self.tokenizer(*args, truncation=True, max_length=self.max_length, verbose=False)
        # Batch lengths rounded up (`bucket_length`), as in training: a long stream of texts then meets a few
        # dozen shapes rather than every length, so oneDNN's kernel cache and the heap stop growing with the rows
        # (with `return_freed_memory` per chunk: 639-700 MB over 90,000 SST-2 rows, against 639-766 MB without).
        # Padding is masked, so the probabilities are those of exact padding.
        packed = PackedTokens.from_encoded(encoded, self.tokenizer.pad_token_id, bucket=True)
        if not len(packed):
            return torch.zeros((0, len(self.labels)))
        # The batches `loratune evaluate` makes (longest first, padded to each batch's longest, sized for the
        # device), scored by the same loop, so a text gets the same probabilities from both, whatever else is in
        # its batch.
        loader = packed_eval_loader(packed, self.batch_size, next(self.model.parameters()).device.type)
        logits = predict_logits(self.model, loader, progress=self.progress)[0]
        scores = torch.from_numpy(self.task.probabilities(logits, self.temperature)).float()
        probs = torch.empty_like(scores)
        probs[[i for batch in loader.batch_sampler for i in batch]] = scores
        return probs

    def count_truncated(self, texts: list[str], text_pairs: list[str] | None = None) -> int:
        """How many texts (pairs) are longer than `max_length` tokens, so that `predict` reads only their start."""
        over = 0
        for start in range(0, len(texts), 1000):
            args = [texts[start : start + 1000]] + ([text_pairs[start : start + 1000]] if text_pairs else [])
            bounded, cut = bounded_columns(args, self.max_length)
            # verbose=False: no "sequence length is longer than the maximum" warning per long text
            encoded = self.tokenizer(*bounded, truncation=False, verbose=False)["input_ids"]
            over += sum(len(ids) > self.max_length or c for ids, c in zip(encoded, cut, strict=True))
        return over

    def predict(self, texts: list[str], text_pairs: list[str] | None = None) -> list[dict[str, Any]]:
        """Label, its probability, and every class's probability for each text.

        Multi-label runs give `labels` (every label whose probability reaches its threshold, most probable first;
        possibly none) and their `scores` instead of one `label` and `score`.
        """
        if isinstance(texts, str):
            texts = [texts]
        probs = self.predict_proba(list(texts), text_pairs)
        decided = self.task.decide(probs.numpy(), self.thresholds)
        if self.at_least_one:
            decided = self.task.at_least_one(decided, probs.numpy())
        return [self.task.answer(row, d, self.labels) for row, d in zip(probs.tolist(), decided, strict=True)]
