"""Length-grouped batches: every example once per epoch, little padding, order set by the seed alone."""

from __future__ import annotations

import random

import torch
from datasets import Dataset

from loratune.data.batches import (
    EvalBatchSampler,
    LengthGroupedBatchSampler,
    PackedTokens,
    bucket_length,
    longest_first,
)


def _padding_ratio(batches: list[list[int]], lengths: list[int]) -> float:
    return sum(max(lengths[i] for i in b) * len(b) for b in batches) / sum(lengths)


def test_grouped_batches_cover_every_example_once_with_little_padding():
    rng = random.Random(0)
    lengths = [rng.choice([3, 5, 8, 13, 21, 40, 60]) + rng.randint(0, 3) for _ in range(2000)]
    batches = list(LengthGroupedBatchSampler(lengths, batch_size=32, seed=7))
    assert sorted(i for b in batches for i in b) == list(range(2000))
    assert len(batches) == len(LengthGroupedBatchSampler(lengths, batch_size=32, seed=7))
    assert all(len(b) <= 32 for b in batches)
    shuffled = list(range(2000))
    rng.shuffle(shuffled)
    plain = [shuffled[i : i + 32] for i in range(0, 2000, 32)]
    assert _padding_ratio(batches, lengths) < 1.1
    assert _padding_ratio(plain, lengths) > 2


def test_batch_order_depends_on_the_seed_only():
    lengths = list(range(1, 301))
    first = list(LengthGroupedBatchSampler(lengths, batch_size=8, seed=1, group_batches=4))
    assert first == list(LengthGroupedBatchSampler(lengths, batch_size=8, seed=1, group_batches=4))
    assert first != list(LengthGroupedBatchSampler(lengths, batch_size=8, seed=2, group_batches=4))


def test_evaluation_runs_longest_first():
    assert longest_first([2, 9, 5, 9]) == [1, 3, 2, 0]
    assert list(EvalBatchSampler([2, 9, 5, 9], batch_size=3)) == [[1, 3, 2], [0]]


def _packed(rows: list[dict], bucket: bool = False) -> PackedTokens:
    return PackedTokens.from_dataset(Dataset.from_list(rows), pad_token_id=0, bucket=bucket)


def test_packed_batches_pad_to_the_longest_row_and_mask_the_padding():
    rows = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "label": 1},
        {"input_ids": [5], "attention_mask": [1], "label": 0},
        {"input_ids": [8, 9], "attention_mask": [1, 1], "label": 1},
    ]
    batch = _packed(rows).__getitems__([0, 1])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert torch.equal(batch["labels"], torch.tensor([1, 0]))
    batch = _packed(rows).__getitems__([2, 1])  # any rows, in the order asked
    assert batch["input_ids"].tolist() == [[8, 9], [5, 0]] and batch["input_ids"].dtype == torch.long
    assert batch["labels"].tolist() == [1, 0]


def test_packed_batches_follow_a_selected_dataset_and_the_tokenizer_output():
    ds = Dataset.from_list([{"input_ids": [i] * (i + 1), "label": i} for i in range(5)]).select([4, 0, 2])
    batch = PackedTokens.from_dataset(ds, pad_token_id=7).__getitems__([0, 1])
    assert batch["input_ids"].tolist() == [[4] * 5, [0, 7, 7, 7, 7]] and batch["labels"].tolist() == [4, 0]
    packed = PackedTokens.from_encoded({"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1], [1]]}, 0)
    assert len(packed) == 2 and packed.__getitems__([1, 0])["attention_mask"].tolist() == [[1, 0], [1, 1]]


def test_packed_tokens_are_held_narrow_and_batches_come_out_as_before():
    rows = [
        {"input_ids": [101, 30000, 102], "attention_mask": [1, 1, 1], "token_type_ids": [0, 0, 0], "label": 1},
        {"input_ids": [101, 102], "attention_mask": [1, 1], "token_type_ids": [0, 1], "label": 0},
    ]
    packed = _packed(rows)
    # ids below 32,768 in int16, type ids in int8, and the all-ones mask not held: it is `position < length`
    assert packed.inputs["input_ids"].dtype == torch.int16 and packed.inputs["token_type_ids"].dtype == torch.int8
    assert "attention_mask" not in packed.inputs
    batch = packed.__getitems__([1, 0])
    assert list(batch) == ["input_ids", "attention_mask", "token_type_ids", "labels"]
    assert all(batch[k].dtype == torch.long for k in ("input_ids", "attention_mask", "token_type_ids"))
    assert batch["input_ids"].tolist() == [[101, 102, 0], [101, 30000, 102]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch["token_type_ids"].tolist() == [[0, 1, 0], [0, 0, 0]]
    # a mask with zeros inside a row (a tokenizer that masks some tokens) is kept as it is; a pad id outside the
    # ids' range widens the type instead of wrapping
    rows[1]["attention_mask"] = [1, 0]
    masked = PackedTokens.from_dataset(Dataset.from_list(rows), pad_token_id=50256)
    assert masked.__getitems__([1, 0])["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert masked.__getitems__([1, 0])["input_ids"].tolist() == [[101, 102, 50256], [101, 30000, 102]]


def test_bucket_lengths_are_few_and_pad_little():
    lengths = range(1, 513)
    buckets = [bucket_length(n) for n in lengths]
    assert buckets[:15] == list(range(1, 16))  # short texts pad exactly
    assert all(n <= b < n * 1.125 + 1 for n, b in zip(lengths, buckets, strict=True))
    assert len(set(buckets)) < 64  # 512 lengths, few shapes for oneDNN to build kernels for


def test_bucketing_pads_to_the_bucket_and_masks_it():
    rows = [{"input_ids": list(range(1, 18)), "attention_mask": [1] * 17}]
    batch = _packed(rows, bucket=True).__getitems__([0])
    assert batch["input_ids"].shape == (1, 18)
    assert batch["attention_mask"][0].tolist() == [1] * 17 + [0]


def test_token_budget_batches_keep_each_batch_within_budget_and_cover_every_text():
    lengths = [5, 100, 7, 30, 30, 2, 64, 9, 1, 50] * 7
    batches = list(EvalBatchSampler(lengths, batch_size=8, max_tokens=200))
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 200 or len(batch) == 1
    # longest first, so that a batch too large for memory fails at once
    assert lengths[batches[0][0]] == 100
    assert len(batches[-1]) > len(batches[0])  # short texts come in bigger batches


def test_cpu_evaluation_keeps_fixed_batches_and_a_gpu_gets_a_token_budget():
    from loratune.data import batches

    assert batches.eval_batch_tokens("cpu") is None and not batches.pin_memory("cpu")
    assert batches.eval_batch_tokens("cuda") > 0 and batches.pin_memory("cuda")
