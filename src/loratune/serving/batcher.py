"""Dynamic batching: request handlers queue their texts; one worker loop scores what has queued while the model was
busy as batches of one base model, longest first and cut by a token budget. The loop runs in the process's main
thread and the HTTP server's event loop in another, so `/health` and `/metrics` answer while a batch is scored.

Hand-written rather than taken from a serving framework: the grouping by base model and the mixed-adapter pass
are what lets one process hold many runs (see `serving.adapters`), and the batches are the ones `loratune
evaluate` makes (`data.batches`), which is what keeps the answers equal to `loratune predict`'s.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from loratune.data.batches import PackedTokens, bucket_length, longest_first
from loratune.model.hardware import return_freed_memory
from loratune.serving.adapters import ServedAdapter
from loratune.serving.metrics import ServerMetrics

# Idle this long after a batch and the heap freed by its activations goes back to the system (`return_freed_memory`):
# texts of ever new lengths otherwise leave the resident set creeping up under a steady load.
TRIM_AFTER_S = 1.0
# Under a steady load, at least this often too.
TRIM_EVERY_S = 10.0
# How often an idle worker looks up from its queue (to stop, or to trim).
POLL_S = 0.1
# Once a request has come, the worker waits for the next as long as they keep coming this close together, up to
# LINGER_MAX_S. Why: the HTTP thread needs the CPU to parse and tokenise requests, which a worker that starts a pass
# the moment one text is queued keeps from it; 32 clients got 82 requests/s without the wait, 186 with it (SST-2,
# all-MiniLM-L6-v2, 2 cores). A lone request waits LINGER_GAP_S.
LINGER_GAP_S = 0.001
LINGER_MAX_S = 0.005


@dataclass(eq=False)
class Queued:
    """One request's texts, all for one adapter, waiting for their logits (`future`, of the event loop `loop`)."""

    adapter: ServedAdapter
    rows: list[dict[str, list[int]]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0


class Batcher:
    """Scores queued texts in batches (see the module): request handlers await `score`, and `run` is the worker.

    Why the worker is the main thread: torch ran a batch of one text in 7.4 ms there and 12.7 ms in a worker thread
    (all-MiniLM-L6-v2, bf16, 2 cores: OpenMP's thread team of the main thread is the fast one).
    """

    def __init__(self, max_batch_tokens: int, max_batch_requests: int, metrics: ServerMetrics) -> None:
        self.max_batch_tokens, self.max_batch_requests, self.metrics = max_batch_tokens, max_batch_requests, metrics
        self._inbox: queue.SimpleQueue[Queued] = queue.SimpleQueue()  # from the event loop's thread
        self._queue: collections.deque[Queued] = collections.deque()  # taken in by the worker, not yet scored
        self._idle_since: float | None = None  # None: trimmed since the last batch
        self._trimmed_at = time.perf_counter()

    async def score(self, adapter: ServedAdapter, rows: list[dict[str, list[int]]]) -> np.ndarray:
        """(len(rows), num_labels) float32 logits of the texts, in order, once a batch has scored them."""
        loop = asyncio.get_running_loop()
        item = Queued(adapter, rows, loop.create_future(), loop)
        self._inbox.put(item)
        logits = await item.future
        self.metrics.queue_duration.labels(adapter.name).observe(item.started_at - item.queued_at)
        self.metrics.inference_duration.labels(adapter.name).observe(time.perf_counter() - item.started_at)
        return logits

    def run(self, until: Callable[[], bool]) -> None:
        """The worker: score queued texts until `until()` is true, looking up at least every `POLL_S` seconds."""
        while not until():
            self._collect()
            self.metrics.queue_size.set(len(self._queue))
            now = time.perf_counter()
            idle = self._idle_since is not None and not self._queue and now - self._idle_since > TRIM_AFTER_S
            if idle or now - self._trimmed_at > TRIM_EVERY_S:
                return_freed_memory()
                self._idle_since, self._trimmed_at = None, now
            if not self._queue:
                continue
            taken = self._take()
            self.metrics.queue_size.set(len(self._queue))
            self._process(taken)
            self._idle_since = time.perf_counter()

    def _collect(self) -> None:
        """Move what has arrived into the queue: wait up to `POLL_S` when there is nothing to do, then linger while
        more keeps arriving (`LINGER_GAP_S` apart, `LINGER_MAX_S` at most, or until a full batch)."""
        try:
            if not self._queue:
                self._queue.append(self._inbox.get(timeout=POLL_S))
            deadline = time.perf_counter() + LINGER_MAX_S
            texts = sum(len(item.rows) for item in self._queue)
            while texts < self.max_batch_requests:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._queue.append(self._inbox.get(timeout=min(LINGER_GAP_S, left)))
                texts += len(self._queue[-1].rows)
        except queue.Empty:
            pass

    def _process(self, taken: list[Queued]) -> None:
        started = time.perf_counter()
        for item in taken:
            item.started_at = started
        try:
            results = self._score(taken)
        except Exception as error:  # a bug or a failing model: every waiting request learns of it
            for item in taken:
                item.loop.call_soon_threadsafe(_settle, item.future, None, error)
            return
        for item, logits in zip(taken, results, strict=True):
            item.loop.call_soon_threadsafe(_settle, item.future, logits, None)

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
        """In the worker: the texts of `taken` cut into the batches that cost least (`cheapest_batches`), scored,
        and their logits handed back per request."""
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
        if group.mixed or len(set(names)) == 1:
            batches = cheapest_batches(
                lengths,
                group.overhead_tokens,
                self.max_batch_tokens,
                self.max_batch_requests,
                names,
                group.adapter_tokens,
            )
        else:  # a model per adapter (merged), or PEFT switching adapters between passes: each adapter's own batches
            batches = []
            for name in dict.fromkeys(names):
                own = [i for i, n in enumerate(names) if n == name]
                cut = cheapest_batches(
                    [lengths[i] for i in own], group.overhead_tokens, self.max_batch_tokens, self.max_batch_requests
                )
                batches += [[own[i] for i in part] for part in cut]
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


def cheapest_batches(
    lengths: list[int],
    overhead_tokens: float,
    max_tokens: int,
    max_batch: int,
    adapters: list[str | None] | None = None,
    adapter_tokens: float = 0.0,
) -> list[list[int]]:
    """The texts (their token counts) cut into batches of neighbours in length, longest first, so that the padded
    tokens plus a fixed cost per forward pass (`overhead_tokens`) plus a cost per adapter in a pass
    (`adapter_tokens`, for texts of several adapters mixed in one pass; `adapters`: each text's) are least; no
    batch over `max_tokens` padded tokens (a lone text excepted) or `max_batch` texts. Both costs are measured per
    model at startup, in padded tokens' worth of work.

    Why not one batch of everything queued: sentences of every length padded to the longest cost about twice their
    tokens (16 SST-2 sentences: 1.85x), yet a pass per text pays the fixed cost each time, and splitting a mixed
    batch by length pays each adapter's cost in every part; the best split is a small dynamic programme over the
    sorted lengths (at most `max_batch` texts, so at most a few thousand steps).
    """
    order = longest_first(lengths)
    padded = [bucket_length(lengths[i]) for i in order]
    kinds = [adapters[i] for i in order] if adapters is not None else [None] * len(order)
    n = len(order)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for end in range(1, n + 1):
        seen: set = set()
        for start in range(end - 1, max(0, end - max_batch) - 1, -1):
            seen.add(kinds[start])
            size = end - start
            if size > 1 and size * padded[start] > max_tokens:
                break  # longer texts further back: only larger
            cost = best[start] + overhead_tokens + adapter_tokens * (len(seen) - 1) + size * padded[start]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches, end = [], n
    while end > 0:
        batches.append(order[cut[end] : end])
        end = cut[end]
    return batches[::-1]


def _settle(future: asyncio.Future, result: np.ndarray | None, error: Exception | None) -> None:
    """In the event loop: the answer, unless its client went away (and its handler with it)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
