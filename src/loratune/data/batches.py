"""Texts to batches: tokenising once, then dataloaders over the tokens with dynamic padding, batches grouped by
length so padding stays near 1x, and the batch sizes and pinned memory that suit each device."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset
from torch.utils.data import DataLoader, Sampler

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def bucket_length(length: int) -> int:
    """`length` rounded up to one of eight steps per power of two: exact below 16, then even, multiples of 4, of 8...

    Why: on CPU every new (batch, length) shape makes oneDNN build and cache new matmul kernels and leaves glibc's
    heap more fragmented, so a long run that meets ever rarer lengths grows its memory (all-MiniLM-L6-v2, SST-2,
    batch 32: peak RSS 1.31 GB at 2k sentences, 1.76 GB at 32k). Rounding keeps the shapes few (at most ~12%
    padding on one batch, about 2% over a run) and peak memory nearly flat (1.19 -> 1.31 GB in the benchmark).
    """
    step = 1 << max(0, length.bit_length() - 4)
    return -(-length // step) * step


class PackedTokens(torch.utils.data.Dataset):
    """A tokenised split held as one flat tensor per model input plus row offsets; `__getitems__` gathers a whole
    padded batch (padded to its longest row, rounded up by `bucket_length` when `bucket` is set) in a few tensor
    operations, whatever the batch size.

    Hand-written rather than `DataCollatorWithPadding` (whose `tokenizer.pad` walks Python lists per key) or a
    collator that fills a tensor row by row from Arrow rows: the host must keep ahead of a GPU step of a few
    milliseconds, and those cost a Python loop per text and key on every batch.
    """

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        lengths: np.ndarray,
        labels: np.ndarray | None,
        pad_token_id: int,
        bucket: bool = False,
    ) -> None:
        self.lengths = torch.as_tensor(np.asarray(lengths, dtype=np.int64))
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        self.end = int(self.lengths.sum())  # padding gathers from here: one fill value appended to each input
        # Held in the narrowest integer type that fits, and an all-ones attention mask not held at all (a batch's
        # mask is then `position < length`): 500,000 SST-2 sentences take 33 MB instead of 160 MB in int64.
        self.inputs = {
            key: torch.from_numpy(_narrow(np.append(flat, self._fill(key, pad_token_id))))
            for key, flat in inputs.items()
            if not (key == "attention_mask" and bool(np.all(flat == 1)))
        }
        self.keys = [key for key in inputs if key in self.inputs or key == "attention_mask"]
        # label ids (long, as cross-entropy takes them), or multi-hot rows (float32, as binary cross-entropy does)
        self.labels = None
        if labels is not None:
            floats = np.issubdtype(np.asarray(labels).dtype, np.floating)
            self.labels = torch.tensor(np.asarray(labels, dtype=np.float32 if floats else np.int64))
        self.bucket = bucket

    @staticmethod
    def _fill(key: str, pad_token_id: int) -> int:
        return pad_token_id if key == "input_ids" else 0

    @classmethod
    def from_dataset(cls, ds: Dataset, pad_token_id: int, bucket: bool = False) -> PackedTokens:
        """From a tokenised `datasets.Dataset` (see `tokenize`), read as Arrow columns without a Python row."""
        table = ds.with_format("arrow")[:]  # follows an indices mapping (select, shuffle) where one is set
        inputs, lengths = {}, None
        for key in MODEL_INPUTS:
            if key in table.column_names:
                column = table.column(key).combine_chunks()
                inputs[key] = column.flatten().to_numpy(zero_copy_only=False)
                lengths = np.diff(column.offsets.to_numpy())
        labels = None
        if "label" in table.column_names:
            column = table.column("label").combine_chunks()
            kind = column.type
            if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
                # multi-hot rows
                labels = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
            else:
                labels = column.to_numpy(zero_copy_only=False)
        return cls(inputs, lengths, labels, pad_token_id, bucket)

    @classmethod
    def from_encoded(
        cls, encoded: dict[str, list[list[int]]], pad_token_id: int, bucket: bool = False
    ) -> PackedTokens:
        """From a tokenizer's output (lists of token ids per text), without labels."""
        inputs = {
            key: np.fromiter((t for row in encoded[key] for t in row), dtype=np.int64)
            for key in MODEL_INPUTS
            if key in encoded
        }
        lengths = np.array([len(row) for row in encoded["input_ids"]], dtype=np.int64)
        return cls(inputs, lengths, None, pad_token_id, bucket)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[idx]
        longest = int(lengths.max()) if len(idx) else 0
        if self.bucket:
            longest = bucket_length(longest)
        positions = torch.arange(longest)
        inside = positions < lengths[:, None]
        at = torch.where(inside, self.offsets[idx, None] + positions, self.end)
        batch = {key: (self.inputs[key][at] if key in self.inputs else inside).to(torch.int64) for key in self.keys}
        if self.labels is not None:
            batch["labels"] = self.labels[idx]
        return batch


def _narrow(values: np.ndarray) -> np.ndarray:
    """Token ids (or type ids, or a mask) as int8, int16 or int32 where they fit, int64 otherwise."""
    if values.size == 0:
        return values.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    for kind in (np.int8, np.int16, np.int32):
        if np.iinfo(kind).min <= low and high <= np.iinfo(kind).max:
            return values.astype(kind)
    return values.astype(np.int64)


def _whole_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DataLoader's collate_fn: `PackedTokens.__getitems__` already returns the padded batch."""
    return batch


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar-length examples.

    Shuffles all indices, sorts each group of `group_batches` batches by length, cuts it into batches and shuffles
    the batch order. Hand-written because transformers' `LengthGroupedSampler` shrinks its groups on small data
    (to len / (4 x batch_size) batches each): on 2,000 SST-2 sentences it leaves 1.18x padding, this 1.03x.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_batches: int = 100) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group = batch_size * group_batches

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.group):
            group = sorted(order[start : start + self.group], key=self.lengths.__getitem__, reverse=True)
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return sum(
            math.ceil(min(self.group, len(self.lengths) - s) / self.batch_size)
            for s in range(0, len(self.lengths), self.group)
        )


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Indices from longest to shortest (ties in index order): the order every evaluation and prediction runs in.

    Evaluation order does not matter, and the longest batch comes first, so a batch too large for memory fails at
    once rather than at the end."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


class EvalBatchSampler(Sampler[list[int]]):
    """Batches in `longest_first` order: `batch_size` texts each, or, with `max_tokens`, each as large as fits that
    many padded tokens (batch size times its longest text, at most `max_batch` texts): long texts in small batches,
    short ones in large batches, so a GPU gets the same amount of work per launch whatever the lengths."""

    def __init__(
        self, lengths: Sequence[int], batch_size: int, max_tokens: int | None = None, max_batch: int = 4096
    ) -> None:
        order = longest_first(lengths)
        if not max_tokens:
            self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            return
        self.batches: list[list[int]] = []
        for i in order:
            batch = self.batches[-1] if self.batches else None
            # longest first, so the batch's first text sets its padded length
            if batch is None or len(batch) >= max_batch or (len(batch) + 1) * lengths[batch[0]] > max_tokens:
                self.batches.append([i])
            else:
                batch.append(i)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def eval_batches(lengths: Sequence[int], batch_size: int, device: str) -> EvalBatchSampler:
    """The evaluation batches for `device`: fixed-size on a CPU, by a token budget where the device wants one
    (`eval_batch_tokens`). `loratune evaluate`, `predict` and the run's own scoring all use these, with one process
    or several (`scoring.inference.predict_logits` deals the batches out)."""
    return EvalBatchSampler(lengths, batch_size, eval_batch_tokens(device))


def build_train_loader(
    packed: PackedTokens,
    batch_size: int,
    seed: int,
    epoch: int = 0,
    group_by_length: bool = True,
    device: str = "cpu",
) -> DataLoader:
    """Shuffled training batches from a split packed once per run (`PackedTokens.from_dataset(..., bucket=True)`);
    with `group_by_length`, shuffled groups of similar length.

    The order depends only on (seed, epoch), so a run resumed at an epoch boundary sees the same batches.
    Batch lengths are bucketed (`bucket_length`): training revisits its shapes for many steps, evaluation
    (sorted, a few large batches) does not, so it pads exactly. For a GPU `device`, batches are pinned so that
    the copy to the device overlaps the step before it.
    """
    pinned = pin_memory(device)
    epoch_seed = seed * 1000 + epoch
    if group_by_length:
        batches = LengthGroupedBatchSampler(packed.lengths.tolist(), batch_size, epoch_seed)
        return DataLoader(packed, batch_sampler=batches, collate_fn=_whole_batch, pin_memory=pinned)
    sampler = torch.utils.data.RandomSampler(packed, generator=torch.Generator().manual_seed(epoch_seed))
    return DataLoader(packed, batch_size=batch_size, sampler=sampler, collate_fn=_whole_batch, pin_memory=pinned)


def build_eval_loader(ds: Dataset, batch_size: int, pad_token_id: int, device: str = "cpu") -> DataLoader:
    """Batches in `longest_first` order (no shuffling) for evaluation and prediction (see `eval_batches`)."""
    return packed_eval_loader(PackedTokens.from_dataset(ds, pad_token_id), batch_size, device)


def packed_eval_loader(packed: PackedTokens, batch_size: int, device: str = "cpu") -> DataLoader:
    """`build_eval_loader` for texts already packed (`PackedTokens.from_encoded`: what `predict` reads)."""
    batches = eval_batches(packed.lengths.tolist(), batch_size, device)
    return DataLoader(packed, batch_sampler=batches, collate_fn=_whole_batch, pin_memory=pin_memory(device))


def eval_batch_tokens(device: str) -> int | None:
    """Padded tokens per evaluation batch, or None for fixed batches of `train.eval_batch_size` texts.

    None on a CPU, where batches larger than 128 texts ran slower; on a GPU, a token budget that gives it enough
    work per launch while one batch's activations stay below what a training step holds (8,192 tokens x a
    1,536-wide feed-forward layer in fp32: 50 MB). The figures: benchmarks/README.md, "Figures behind the code".
    """
    return 8192 if device == "cuda" else None


def pin_memory(device: str) -> bool:
    """Page-locked batches, so the copy to a GPU overlaps the step before it; pointless on a CPU."""
    return device == "cuda"


# Characters kept per token of `max_length` before a text is tokenised. A fast tokenizer splits the whole text before
# it truncates: one 50 MB line took 5.9 GB and aborted the process. No tokenizer in use makes tokens anywhere near
# this long on average, so a text cut here still fills `max_length` tokens, and is counted as truncated.
CHARS_PER_TOKEN = 64


def bounded_texts(texts: list[Any], max_length: int) -> tuple[list[Any], list[bool]]:
    """The texts cut to `CHARS_PER_TOKEN * max_length` characters, and which of them were cut."""
    limit = CHARS_PER_TOKEN * max_length
    cut = [isinstance(t, str) and len(t) > limit for t in texts]
    return [t[:limit] if c else t for t, c in zip(texts, cut, strict=True)], cut


def bounded_columns(columns: list[list[Any]], max_length: int) -> tuple[list[list[Any]], list[bool]]:
    """`bounded_texts` of each text column (texts, and their pairs), and which rows had a text cut in any."""
    bounded = [bounded_texts(column, max_length) for column in columns]
    cut = [any(flags) for flags in zip(*(flags for _, flags in bounded), strict=True)]
    return [texts for texts, _ in bounded], cut


def tokenize(ds: Dataset, tokenizer: Any, max_length: int) -> tuple[Dataset, int]:
    """Tokenise once (cached by `datasets`) and add a `length` column for length-grouped batching.

    Returns:
        The tokenised dataset (input_ids, attention_mask, [token_type_ids], label, length) and how many texts
        were longer than `max_length` and so truncated.
    """
    pair = "text_pair" in ds.column_names

    def encode(batch: dict[str, list]) -> dict[str, list]:
        columns = [batch["text"], batch["text_pair"]] if pair else [batch["text"]]
        args, was_cut = bounded_columns(columns, max_length)
        full = tokenizer(*args, truncation=False, verbose=False)
        over = [i for i, ids in enumerate(full["input_ids"]) if len(ids) > max_length or was_cut[i]]
        if over:
            # Only the few long texts are encoded a second time, so the truncation count costs almost nothing.
            cut = tokenizer(*[[a[i] for i in over] for a in args], truncation=True, max_length=max_length)
            for key in full:
                for j, i in enumerate(over):
                    full[key][i] = cut[key][j]
        over_set = set(over)
        full["length"] = [len(ids) for ids in full["input_ids"]]
        full["truncated"] = [i in over_set for i in range(len(batch["text"]))]
        return dict(full)

    remove = [c for c in ds.column_names if c != "label"]
    encoded = ds.map(encode, batched=True, batch_size=1000, remove_columns=remove, desc="Tokenising")
    truncated = int(sum(encoded["truncated"]))
    return encoded.remove_columns("truncated"), truncated
