"""The server's Prometheus figures (`GET /metrics`), named after text-embeddings-inference's `te_*` ones with a
`loratune_` prefix: requests by adapter and outcome, request, queue and inference durations, batch sizes and
tokens, and the queue."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds, from a millisecond to a minute.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class ServerMetrics:
    """The metrics of one server, in a registry of its own (several servers can live in one process, as in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_count = Counter("loratune_request_count", "Requests received.", ["adapter"], registry=r)
        self.request_success = Counter("loratune_request_success", "Requests answered.", ["adapter"], registry=r)
        self.request_failure = Counter(
            "loratune_request_failure", "Requests refused or failed, by error type.", ["adapter", "err"], registry=r
        )
        self.request_duration = Histogram(
            "loratune_request_duration", "Seconds from arrival to answer.", ["adapter"], buckets=DURATION_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.tokenization_duration = Histogram(
            "loratune_request_tokenization_duration", "Seconds spent tokenising a request.", ["adapter"],
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_duration = Histogram(
            "loratune_request_queue_duration", "Seconds a request's texts waited for a batch.", ["adapter"],
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_duration = Histogram(
            "loratune_request_inference_duration", "Seconds the batches holding a request's texts took.",
            ["adapter"], buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram("loratune_batch_size", "Texts per batch.", buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "loratune_batch_tokens", "Padded tokens per batch.", buckets=TOKEN_BUCKETS, registry=r
        )
        self.queue_size = Gauge("loratune_queue_size", "Requests waiting for a batch.", registry=r)
        self.in_flight = Gauge("loratune_requests_in_flight", "Requests accepted and not yet answered.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
