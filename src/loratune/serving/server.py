"""The `loratune serve` process: load and check every run, warm the models up, listen (uvicorn), and on SIGTERM or
Ctrl-C drain — `/health` and new requests answer 503, every request already accepted is answered — then exit 0."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from typing import Any

from loratune.errors import ConfigError
from loratune.progress import announce
from loratune.serving.adapters import ModelGroup, load_groups, name_runs
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
    groups = load_groups(pairs, device, precision, trust_unverified)
    for group in groups:
        _warm_up(group)
    return ServerState(groups, options)


def _warm_up(group: ModelGroup) -> None:
    """One pass per adapter before the port opens, so the first request does not pay for kernel selection."""
    from loratune.data.batches import PackedTokens

    for adapter in group.adapters:
        rows = adapter.encode(["warm up"], None, True) if not adapter.pair else adapter.encode(["a"], ["b"], True)
        packed = PackedTokens.from_encoded({k: [r[k] for r in rows] for k in rows[0]}, group.pad_token_id, True)
        group.logits(packed.__getitems__([0]), [adapter.peft_name], len(adapter.labels))


def describe(state: ServerState) -> str:
    """One line per model: its adapters."""
    lines = []
    for group in state.groups:
        names = ", ".join(group.names)
        shared = " (one shared copy)" if len(group.adapters) > 1 else ""
        lines.append(f"  {group.base} {group.dtype}{shared}: {names}")
    return "\n".join(lines)


class DrainingServer:
    """uvicorn's `Server`, except that SIGTERM and Ctrl-C drain before it stops (see the module), and that the
    process then exits 0 rather than re-raising the signal. A second Ctrl-C stops at once."""

    def __init__(self, app: Any, state: ServerState, host: str, port: int) -> None:
        """Binds the port at once (0: one the system picks, then in `self.port`).

        Raises:
            ConfigError: when the address cannot be bound (in use, not this machine's, no permission).
        """
        import uvicorn

        self.state = state
        self.socket = _bind(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
            timeout_graceful_shutdown=max(1, int(state.options.drain_timeout_s)),
        )  # fmt: skip
        outer = self

        class _Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                outer._signalled(self, sig)

            async def on_tick(self, counter: int) -> bool:
                return outer._drained() or await super().on_tick(counter)

        self.server = _Server(config)
        self._deadline: float | None = None

    def _signalled(self, server: Any, sig: int) -> None:
        if self.state.phase == "draining":
            if sig == signal.SIGINT:
                server.force_exit = True
            server.should_exit = True
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

    def run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.socket]))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
