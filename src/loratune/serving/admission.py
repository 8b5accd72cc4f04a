"""Admission, in front of the routes: the API key, draining, the concurrency bound and the payload limit, each
refused at once as TEI's JSON error; and the count of requests in flight, which draining waits for."""

from __future__ import annotations

import hmac
import json
from typing import Any

from loratune.serving.api import OVERLOADED, UNAUTHORIZED, UNHEALTHY, VALIDATION
from loratune.serving.state import ServerState


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
                return await self._refuse(
                    send, 401, UNAUTHORIZED, "Missing or wrong API key; send Authorization: Bearer KEY."
                )
        if path in self.OPEN or path == "/metrics":
            return await self.app(scope, receive, send)
        state = self.state
        if state.phase == "draining":
            return await self._refuse(
                send, 503, UNHEALTHY, "The server is shutting down; send the request to another replica."
            )
        if state.in_flight >= state.options.max_concurrent_requests:
            return await self._refuse(
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
                return await self._refuse(
                    send,
                    413,
                    VALIDATION,
                    f"The body is over the {limit:,}-byte limit (--payload-limit); send less per request.",
                )
            await self.app(scope, _replay(body, receive), send)
        finally:
            state.in_flight -= 1
            state.metrics.in_flight.set(state.in_flight)

    async def _refuse(self, send: Any, status: int, error_type: str, message: str) -> None:
        """Answer with TEI's JSON error, counted in the metrics (no adapter: the body was never read)."""
        self.state.metrics.request_failure.labels("", error_type).inc()
        await _send_error(send, status, error_type, message)

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
