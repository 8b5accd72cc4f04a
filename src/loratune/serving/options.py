"""The limits and switches of a server, light to import (the command line builds them before FastAPI loads)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeOptions:
    """The limits and switches of a server (the `loratune serve` flags; TEI's names and defaults where it has one,
    batch sizes measured on a CPU in benchmarks/bench_serve.py)."""

    max_concurrent_requests: int = 512
    max_batch_tokens: int = 16384
    max_batch_requests: int = 64
    max_client_batch_size: int = 32
    payload_limit: int = 2_000_000
    auto_truncate: bool = True
    api_key: str | None = None
    drain_timeout_s: float = 30.0
    backend: str = "auto"  # torch, onnx, or auto: each folder for what it is (a run folder or an ONNX export)
