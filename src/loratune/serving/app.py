"""The HTTP routes of `loratune serve` (FastAPI): TEI's `/predict`, `/info`, `/health` and `/metrics`, vLLM's
`/v1/models` and `/v1/classify`, every error as TEI's JSON. Admission (API key, draining, the concurrency bound, the
payload limit) happens in `admission.Admission`, before a request reaches a route."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from loratune.serving.adapters import ServedAdapter
from loratune.serving.admission import Admission
from loratune.serving.api import (
    BACKEND,
    NOT_FOUND,
    UNHEALTHY,
    VALIDATION,
    ClassifyRequest,
    ClientError,
    PredictRequest,
)
from loratune.serving.state import ServerState

log = logging.getLogger(__name__)

VERSION = importlib.metadata.version("loratune")

# Tokenised in a worker thread above this many characters, so a large request does not hold up the event loop.
THREADED_CHARS = 20_000


def build_app(state: ServerState) -> Any:
    """The ASGI application: the FastAPI routes behind `Admission`."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        state.phase = "ready"
        yield

    app = FastAPI(title="loratune", version=VERSION, lifespan=lifespan)
    _add_error_handlers(app, state)

    @app.get("/health")
    async def health() -> Response:
        if state.phase != "ready":
            return _error(503, UNHEALTHY, f"The server is {state.phase}.")
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info")
    async def info() -> Response:
        return JSONResponse(_info(state))

    @app.get("/v1/models")
    async def models() -> Response:
        data = [
            {
                "id": a.name, "object": "model", "created": state.started, "owned_by": "loratune",
                "root": a.group.base, "parent": a.group.base, "max_model_len": a.max_length,
            }
            for a in state.adapters.values()
        ]  # fmt: skip
        return JSONResponse({"object": "list", "data": data})

    @app.post("/predict")
    async def predict(body: PredictRequest) -> Response:
        adapter = _counted_adapter(state, body.adapter)
        return await _answer(state, adapter, lambda: _predict(state, adapter, body))

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest) -> Response:
        adapter = _counted_adapter(state, body.model)
        return await _answer(state, adapter, lambda: _classify(state, adapter, body))

    return Admission(app, state)


def _counted_adapter(state: ServerState, name: str | None) -> ServedAdapter:
    try:
        adapter = state.adapter(name)
    except ClientError as error:
        state.metrics.request_failure.labels("", error.error_type).inc()
        raise
    state.metrics.request_count.labels(adapter.name).inc()
    return adapter


async def _answer(state: ServerState, adapter: ServedAdapter, work: Any) -> Response:
    """Run a route's work, counting its success or failure and its duration by adapter."""
    started = time.perf_counter()
    try:
        body = await work()
    except ClientError as error:
        state.metrics.request_failure.labels(adapter.name, error.error_type).inc()
        raise
    except Exception:
        state.metrics.request_failure.labels(adapter.name, BACKEND).inc()
        raise
    state.metrics.request_success.labels(adapter.name).inc()
    state.metrics.request_duration.labels(adapter.name).observe(time.perf_counter() - started)
    return JSONResponse(body)


async def _encode(
    state: ServerState, adapter: ServedAdapter, texts: list[str], pairs: list[str] | None, truncate: bool
) -> list[dict[str, list[int]]]:
    if not texts:
        raise ClientError(422, VALIDATION, "inputs is empty; send a text or a list of texts.")
    if len(texts) > state.options.max_client_batch_size:
        raise ClientError(
            413,
            VALIDATION,
            f"{len(texts)} inputs in one request; this server takes at most {state.options.max_client_batch_size} "
            "(--max-client-batch-size). Split the batch.",
        )
    started = time.perf_counter()
    if sum(map(len, texts)) + sum(map(len, pairs or [])) > THREADED_CHARS:
        rows = await asyncio.to_thread(adapter.encode, texts, pairs, truncate)
    else:
        rows = adapter.encode(texts, pairs, truncate)
    state.metrics.tokenization_duration.labels(adapter.name).observe(time.perf_counter() - started)
    return rows


def _read_inputs(inputs: Any, adapter: ServedAdapter) -> tuple[list[str], list[str] | None, bool]:
    """TEI's `inputs` as (texts, pairs or None, whether it was a single input rather than a batch)."""
    if isinstance(inputs, str):
        return [inputs], None, True
    if inputs and all(isinstance(x, str) for x in inputs):
        if adapter.pair:  # TEI's reading of a flat list: one pair
            if len(inputs) != 2:
                raise ClientError(
                    422,
                    VALIDATION,
                    f"Adapter {adapter.name!r} reads text pairs; send [text, text_pair] or a list of them.",
                )
            return [inputs[0]], [inputs[1]], True
        return list(inputs), None, False
    sizes = {len(x) for x in inputs}
    if adapter.pair:
        if sizes != {2}:
            raise ClientError(422, VALIDATION, f"Adapter {adapter.name!r} reads text pairs: [[text, text_pair], ...].")
        return [x[0] for x in inputs], [x[1] for x in inputs], False
    if sizes - {1}:
        raise ClientError(
            422, VALIDATION, f"Adapter {adapter.name!r} reads single texts, not pairs: send [[text], [text], ...]."
        )
    return [x[0] for x in inputs], None, False


async def _predict(state: ServerState, adapter: ServedAdapter, body: PredictRequest) -> Any:
    texts, pairs, single = _read_inputs(body.inputs, adapter)
    truncate = state.options.auto_truncate if body.truncate is None else body.truncate
    rows = await _encode(state, adapter, texts, pairs, truncate)
    logits = await state.batcher.score(adapter, rows)
    probs = adapter.probabilities(logits)
    decided = adapter.decide(probs, body.at_least_one) if adapter.task.needs_thresholds else None
    shown = logits if body.raw_scores else probs
    answers = []
    for i, scores in enumerate(shown):
        order = np.argsort(-probs[i], kind="stable")[: body.top_k]
        entries = [{"label": adapter.labels[k], "score": float(scores[k])} for k in order]
        if decided is not None:  # multi-label: which labels passed their thresholds
            for entry, k in zip(entries, order, strict=True):
                entry["selected"] = bool(decided[i][k])
        answers.append(entries)
    return answers[0] if single else answers


async def _classify(state: ServerState, adapter: ServedAdapter, body: ClassifyRequest) -> Any:
    if adapter.pair:
        raise ClientError(422, VALIDATION, f"Adapter {adapter.name!r} reads text pairs; send them to /predict.")
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    truncate = state.options.auto_truncate or body.truncate_prompt_tokens is not None
    rows = await _encode(state, adapter, texts, None, truncate)
    logits = await state.batcher.score(adapter, rows)
    probs = adapter.probabilities(logits)
    decided = adapter.decide(probs)
    data = []
    for i, row in enumerate(probs):
        item = {"index": i, "label": adapter.labels[int(np.argmax(row))], "probs": [float(p) for p in row]}
        item["num_classes"] = len(adapter.labels)
        if adapter.task.needs_thresholds:  # the label set, most probable first, as `loratune predict` gives it
            item["labels"] = adapter.task.answer(row, decided[i], adapter.labels)["labels"]
        data.append(item)
    tokens = sum(len(r["input_ids"]) for r in rows)
    return {
        "id": f"classify-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": adapter.name,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }


def _info(state: ServerState) -> dict[str, Any]:
    """TEI's `/info` fields, for the only adapter (or the first), plus every adapter's own."""
    first = next(iter(state.adapters.values()))
    o = state.options
    return {
        "model_id": first.group.base,
        "model_sha": None,
        "model_dtype": first.group.dtype,
        "model_type": {
            "classifier": {
                "id2label": {str(i): label for i, label in enumerate(first.labels)},
                "label2id": {label: i for i, label in enumerate(first.labels)},
            }
        },
        "max_concurrent_requests": o.max_concurrent_requests,
        "max_input_length": max(a.max_length for a in state.adapters.values()),
        "max_batch_tokens": o.max_batch_tokens,
        "max_batch_requests": o.max_batch_requests,
        "max_client_batch_size": o.max_client_batch_size,
        "auto_truncate": o.auto_truncate,
        "tokenization_workers": None,
        "version": VERSION,
        "adapters": [a.describe() for a in state.adapters.values()],
    }


def _error(status: int, error_type: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status)


def _add_error_handlers(app: FastAPI, state: ServerState) -> None:
    @app.exception_handler(ClientError)
    async def client_error(_request: Request, error: ClientError) -> Response:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> Response:
        state.metrics.request_failure.labels("", VALIDATION).inc()  # before an adapter is known
        return _error(422, VALIDATION, _validation_message(error))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> Response:
        kind = NOT_FOUND if error.status_code == 404 else VALIDATION
        return _error(error.status_code, kind, str(error.detail))

    @app.exception_handler(Exception)
    async def bug(_request: Request, error: Exception) -> Response:  # never the client's fault: logged in full
        log.exception("request failed")
        return _error(500, BACKEND, f"The server failed on this request ({type(error).__name__}); see its log.")


def _validation_message(error: RequestValidationError) -> str:
    """pydantic's first complaint as one line: where in the body, and what."""
    problems = error.errors()
    if not problems:
        return "Invalid request."
    first = problems[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    if first.get("type") == "json_invalid":
        return f"The body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})."
    if first.get("type") == "extra_forbidden":
        return f"Unknown field {where!r}; see GET /docs for the fields this route takes."
    return f"{where or 'body'}: {first.get('msg', 'invalid')}" + (
        f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    )
