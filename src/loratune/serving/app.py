"""The HTTP routes of `loratune serve` (FastAPI): TEI's `/predict`, `/info`, `/health` and `/metrics`, vLLM's
`/v1/models` and `/v1/classify`, every error as TEI's JSON. Admission (API key, draining, the concurrency bound, the
payload limit) happens in `Admission`, before a request reaches a route."""

from __future__ import annotations

import asyncio
import hmac
import json
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

from loratune import __version__
from loratune.serving.adapters import ModelGroup, ServedAdapter
from loratune.serving.api import (
    BACKEND,
    NOT_FOUND,
    OVERLOADED,
    UNAUTHORIZED,
    UNHEALTHY,
    VALIDATION,
    ClassifyRequest,
    ClientError,
    PredictRequest,
)
from loratune.serving.batcher import Batcher
from loratune.serving.metrics import ServerMetrics
from loratune.serving.options import ServeOptions

log = logging.getLogger(__name__)

# Tokenised in a worker thread above this many characters, so a large request does not hold up the event loop.
THREADED_CHARS = 20_000


class ServerState:
    """What the routes and the process share: the adapters, the batcher, the metrics and the phase."""

    def __init__(self, groups: list[ModelGroup], options: ServeOptions) -> None:
        self.groups, self.options = groups, options
        self.adapters: dict[str, ServedAdapter] = {a.name: a for g in groups for a in g.adapters}
        self.metrics = ServerMetrics()
        self.batcher = Batcher(options.max_batch_tokens, options.max_batch_requests, self.metrics)
        self.phase = "starting"  # then "ready", then "draining" from SIGTERM or Ctrl-C on
        self.in_flight = 0
        self.started = int(time.time())

    def adapter(self, name: str | None) -> ServedAdapter:
        """The adapter a request names, or the only one when it names none.

        Raises:
            ClientError: 404 for an unknown name, 422 for none given where there are several.
        """
        if name is None:
            if len(self.adapters) == 1:
                return next(iter(self.adapters.values()))
            raise ClientError(
                422, VALIDATION, f'This server holds several adapters; name one with "adapter": one of {self.names}.'
            )
        if name not in self.adapters:
            raise ClientError(404, NOT_FOUND, f"No adapter named {name!r}; this server holds {self.names}.")
        return self.adapters[name]

    @property
    def names(self) -> list[str]:
        return list(self.adapters)


def build_app(state: ServerState) -> Any:
    """The ASGI application: the FastAPI routes behind `Admission`."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        state.batcher.start()
        state.phase = "ready"
        yield
        await state.batcher.stop()

    app = FastAPI(title="loratune", version=__version__, lifespan=lifespan)
    _add_error_handlers(app)

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
        if adapter.task.needs_thresholds:
            item["labels"] = [adapter.labels[k] for k in sorted(np.flatnonzero(decided[i]), key=lambda k: -row[k])]
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
        "version": __version__,
        "adapters": [a.describe() for a in state.adapters.values()],
    }


def _error(status: int, error_type: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClientError)
    async def client_error(_request: Request, error: ClientError) -> Response:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> Response:
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


class Admission:
    """ASGI middleware in front of the routes: the API key, draining, the concurrency bound and the payload limit,
    each refused at once as TEI's JSON error; and the count of requests in flight, which draining waits for.

    Hand-written as plain ASGI rather than a FastAPI middleware so that a refusal costs no body parsing, and so that
    the body read here (at most `payload_limit` bytes, then 413) is what the route reads.
    """

    OPEN = ("/health",)  # answered without the API key and while draining (load balancers poll it)

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state
        key = state.options.api_key
        self._expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        headers = dict(scope.get("headers") or [])
        if self._expected is not None and path not in self.OPEN:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                return await _send_error(
                    send, 401, UNAUTHORIZED, "Missing or wrong API key; send Authorization: Bearer KEY."
                )
        if path in self.OPEN or path == "/metrics":
            return await self.app(scope, receive, send)
        state = self.state
        if state.phase == "draining":
            return await _send_error(
                send, 503, UNHEALTHY, "The server is shutting down; send the request to another replica."
            )
        if state.in_flight >= state.options.max_concurrent_requests:
            state.metrics.request_failure.labels("", OVERLOADED).inc()
            return await _send_error(
                send, 429, OVERLOADED, f"The server is full ({state.in_flight} requests in flight); retry shortly."
            )
        state.in_flight += 1
        state.metrics.in_flight.set(state.in_flight)
        try:
            try:
                body = await self._read_body(headers, receive)
            except _Disconnected:  # the client went away mid-body: nobody to answer
                return
            if body is None:
                limit = state.options.payload_limit
                return await _send_error(
                    send,
                    413,
                    VALIDATION,
                    f"The body is over the {limit:,}-byte limit (--payload-limit); send less per request.",
                )
            await self.app(scope, _replay(body, receive), send)
        finally:
            state.in_flight -= 1
            state.metrics.in_flight.set(state.in_flight)

    async def _read_body(self, headers: dict, receive: Any) -> bytes | None:
        """The whole body, or None once it passes the payload limit (by its Content-Length or as it arrives)."""
        limit = self.state.options.payload_limit
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


class _Disconnected(Exception):
    """The client closed its connection before sending the whole body."""


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then the client's own messages: a disconnect

    return replayed


async def _send_error(send: Any, status: int, error_type: str, message: str) -> None:
    payload = json.dumps({"error": message, "error_type": error_type}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
