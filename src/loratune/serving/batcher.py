"""Dynamic batching: request handlers queue their texts; one worker scores what has queued while the model was busy
as batches of one base model, longest first and cut by a token budget, in a thread of its own, so the event loop
keeps answering `/health` and `/metrics` meanwhile.

Hand-written rather than taken from a serving framework: the grouping by base model and the mixed-adapter pass
are what lets one process hold many runs (see `serving.adapters`), and the batches are the ones `loratune
evaluate` makes (`data.batches`), which is what keeps the answers equal to `loratune predict`'s.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from loratune.data.batches import EvalBatchSampler, PackedTokens
from loratune.model.hardware import return_freed_memory
from loratune.serving.adapters import ServedAdapter
from loratune.serving.metrics import ServerMetrics

# Idle this long after a batch and the heap freed by its activations goes back to the system (`return_freed_memory`):
# texts of ever new lengths otherwise leave the resident set creeping up under a steady load.
TRIM_AFTER_S = 1.0


@dataclass(eq=False)
class Queued:
    """One request's texts, all for one adapter, waiting for their logits."""

    adapter: ServedAdapter
    rows: list[dict[str, list[int]]]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0


class Batcher:
    """Scores queued texts in batches (see the module); `score` is what request handlers await."""

    def __init__(self, max_batch_tokens: int, max_batch_requests: int, metrics: ServerMetrics) -> None:
        self.max_batch_tokens, self.max_batch_requests, self.metrics = max_batch_tokens, max_batch_requests, metrics
        self._queue: collections.deque[Queued] = collections.deque()
        self._wake = asyncio.Event()
        # One thread: the model runs one batch at a time, on all of torch's threads.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="loratune-model")
        self._worker: asyncio.Task | None = None
        self._last_batch = 0.0
        self._trimmed = True

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=True)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def score(self, adapter: ServedAdapter, rows: list[dict[str, list[int]]]) -> np.ndarray:
        """(len(rows), num_labels) float32 logits of the texts, in order, once a batch has scored them."""
        item = Queued(adapter, rows, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self.metrics.queue_size.set(len(self._queue))
        self._wake.set()
        logits = await item.future
        self.metrics.queue_duration.labels(adapter.name).observe(item.started_at - item.queued_at)
        self.metrics.inference_duration.labels(adapter.name).observe(time.perf_counter() - item.started_at)
        return logits

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), TRIM_AFTER_S if not self._trimmed else None)
                except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                    await loop.run_in_executor(self._executor, return_freed_memory)
                    self._trimmed = True
                continue
            taken = self._take()
            self.metrics.queue_size.set(len(self._queue))
            started = time.perf_counter()
            for item in taken:
                item.started_at = started
            try:
                results = await loop.run_in_executor(self._executor, self._score, taken)
            except Exception as error:  # a bug or a failing model: every waiting request learns of it
                for item in taken:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            finally:
                self._trimmed = False
            for item, logits in zip(taken, results, strict=True):
                if not item.future.done():  # its client may have gone, and its handler with it
                    item.future.set_result(logits)

    def _take(self) -> list[Queued]:
        """The oldest request and those queued after it for the same model and number of labels (one logits
        tensor), up to `max_batch_requests` texts."""
        key = _batch_key(self._queue[0])
        taken, rest, texts = [], collections.deque(), 0
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # cancelled: its client went away before it was scored
                continue
            if _batch_key(item) == key and (not taken or texts + len(item.rows) <= self.max_batch_requests):
                taken.append(item)
                texts += len(item.rows)
            else:
                rest.append(item)
        self._queue = rest
        return taken

    def _score(self, taken: list[Queued]) -> list[np.ndarray]:
        """In the worker thread: the texts of `taken` padded and cut into token-budget batches, longest first (as
        `loratune evaluate` batches them), scored, and their logits handed back per request."""
        group = taken[0].adapter.group
        rows = [row for item in taken for row in item.rows]
        names = [item.adapter.peft_name for item in taken for _ in item.rows]
        keys = list(rows[0])
        packed = PackedTokens.from_encoded(
            {k: [row[k] for row in rows] for k in keys}, group.pad_token_id, bucket=True
        )
        lengths = packed.lengths.tolist()
        width = len(taken[0].adapter.labels)
        logits = torch.empty((len(rows), width))
        batches = EvalBatchSampler(lengths, self.max_batch_requests, self.max_batch_tokens, self.max_batch_requests)
        for batch_rows in batches:
            batch = packed.__getitems__(batch_rows)
            logits[batch_rows] = group.logits(batch, [names[i] for i in batch_rows], width)
            self.metrics.batch_size.observe(len(batch_rows))
            self.metrics.batch_tokens.observe(batch["input_ids"].numel())
        out, start = [], 0
        array = logits.numpy()
        for item in taken:
            out.append(array[start : start + len(item.rows)])
            start += len(item.rows)
        return out


def _batch_key(item: Queued) -> tuple[int, int]:
    return id(item.adapter.group), len(item.adapter.labels)
