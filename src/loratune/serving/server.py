"""The `loratune serve` process: load and check every run, warm the models up, listen (uvicorn), and on SIGTERM or
Ctrl-C drain — `/health` and new requests answer 503, every request already accepted is answered — then exit 0."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from typing import Any

from loratune.errors import ConfigError
from loratune.progress import announce
from loratune.serving.adapters import ModelGroup, ServedAdapter, load_groups, name_runs
from loratune.serving.options import ServeOptions
from loratune.serving.state import ServerState


def load_state(
    runs: list[str],
    named: list[str],
    options: ServeOptions,
    device: str = "auto",
    precision: str = "auto",
    trust_unverified: bool = False,
) -> ServerState:
    """Every run opened and checked, their models loaded (shared where they can be) and warmed up.

    Raises:
        ConfigError: for bad names (see `adapters.name_runs`).
        RunError: naming the first bad run folder.
    """
    pairs = name_runs(runs, named)
    announce(f"loading {len(pairs)} run{'s' * (len(pairs) != 1)}")
    groups = load_groups(pairs, device, precision, trust_unverified, options.backend)
    for group in groups:
        _warm_up(group)
    return ServerState(groups, options)


def _warm_up(group: ModelGroup) -> None:
    """One pass per adapter before the port opens, so the first request does not pay for kernel selection; then
    the model's fixed cost per pass, measured (`ModelGroup.overhead_tokens`)."""
    for adapter in group.adapters:
        _time_pass(group, adapter, "warm up", 1)
    adapter, text = group.adapters[0], "word " * 30
    _time_pass(group, adapter, text, 16)
    one = sorted(_time_pass(group, adapter, text, 1) for _ in range(3))[1]
    many = sorted(_time_pass(group, adapter, text, 16) for _ in range(3))[1]
    tokens = len(adapter.encode([text], [text] if adapter.pair else None, True)[0]["input_ids"])
    per_token = (many - one) / (15 * tokens)
    if per_token <= 0:
        return
    group.overhead_tokens = min(4096.0, max(0.0, (one - per_token * tokens) / per_token))
    spread = [a for a in group.adapters if len(a.labels) == len(adapter.labels)][:8]  # one batch holds one width
    if group.mixed and len(spread) > 1:  # the same 16 texts dealt over several adapters
        mixed = sorted(_time_pass(group, adapter, text, 16, spread) for _ in range(3))[1]
        group.adapter_tokens = min(4096.0, max(0.0, (mixed - many) / (len(spread) - 1) / per_token))


def _time_pass(
    group: ModelGroup, adapter: ServedAdapter, text: str, copies: int, spread: list[ServedAdapter] | None = None
) -> float:
    """Seconds one pass over `copies` copies of `text` takes (for `adapter`, or dealt over the adapters `spread`)."""
    from loratune.data.batches import PackedTokens

    rows = adapter.encode([text] * copies, [text] * copies if adapter.pair else None, True)
    packed = PackedTokens.from_encoded({k: [r[k] for r in rows] for k in rows[0]}, group.pad_token_id, True)
    batch = packed.__getitems__(list(range(copies)))
    names = [(spread[i % len(spread)] if spread else adapter).peft_name for i in range(copies)]
    started = time.perf_counter()
    group.logits(batch, names, len(adapter.labels))
    return time.perf_counter() - started


def describe(state: ServerState) -> str:
    """One line per model: its adapters."""
    lines = []
    for group in state.groups:
        names = ", ".join(group.names)
        shared = ""
        if len(group.adapters) > 1:
            shared = " (each run merged, unchanged weights shared)" if group.merged else " (one shared copy)"
        lines.append(f"  {group.base} {group.dtype}{shared}: {names}")
    return "\n".join(lines)


class DrainingServer:
    """uvicorn's `Server` in a thread of its own, the batcher's worker in the main thread (see `serving.batcher`),
    and SIGTERM or Ctrl-C draining before uvicorn stops (see the module); the process then exits 0 rather than
    re-raising the signal. A second Ctrl-C stops at once."""

    def __init__(self, app: Any, state: ServerState, sock: socket.socket) -> None:
        """`sock`: the listening socket (`bind`)."""
        import uvicorn

        self.state = state
        self.socket = sock
        host, port = sock.getsockname()[:2]
        self.host, self.port = host, port
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
            timeout_graceful_shutdown=max(1, int(state.options.drain_timeout_s)),
        )  # fmt: skip
        outer = self

        class _Server(uvicorn.Server):
            async def on_tick(self, counter: int) -> bool:
                return outer._drained() or await super().on_tick(counter)

        self.server = _Server(config)
        self._deadline: float | None = None

    def run(self) -> None:
        """Serve until drained: HTTP in a thread (uvloop and httptools where installed: the `serve` extra), the
        model in this one."""
        http = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="loratune-http", daemon=True
        )
        previous = {sig: signal.signal(sig, self._signalled) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            http.start()
            self.state.batcher.run(until=lambda: not http.is_alive())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _signalled(self, sig: int, _frame: Any) -> None:
        if self.state.phase == "draining":
            if sig == signal.SIGINT:
                self.server.force_exit = True
            self.server.should_exit = True
            return
        self.state.phase = "draining"
        self._deadline = time.monotonic() + self.state.options.drain_timeout_s
        waiting = self.state.in_flight
        print(f"draining: {waiting} request{'s' * (waiting != 1)} in flight, no new ones accepted", file=sys.stderr)

    def _drained(self) -> bool:
        """Whether a drain has finished: nothing in flight, or the drain timeout passed."""
        if self._deadline is None:
            return False
        if self.state.in_flight and time.monotonic() < self._deadline:
            return False
        if self.state.in_flight:
            print(f"drain timeout: {self.state.in_flight} requests unanswered", file=sys.stderr)
        return True


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host`:`port` (0: a port the system picks), bound before any model loads.

    Raises:
        ConfigError: when the address cannot be bound (in use, not this machine's, no permission).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without it every answer waited ~40 ms for a delayed ACK (Nagle). uvicorn sets
    # it on the sockets it binds itself, not on one handed to it.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(
            f"Could not listen on {host}:{port} ({error.strerror or error}); pick another --port or --host."
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
