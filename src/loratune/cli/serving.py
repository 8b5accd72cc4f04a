"""`loratune serve`: the flags checked, the runs loaded and checked, then the server until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from loratune.errors import ConfigError
from loratune.serving.options import ServeOptions

# What `pip install loratune[serve]` adds.
SERVE_PACKAGES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "prometheus_client": "prometheus-client"}


def serve_command(args: argparse.Namespace) -> int:
    """Check the flags before any model loads, load every run, then serve until told to stop."""
    options = _options(args)
    missing = [pkg for module, pkg in SERVE_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(
            f"loratune serve needs {', '.join(missing)}; install them with pip install 'loratune[serve]'."
        )
    from loratune.serving.app import build_app
    from loratune.serving.server import DrainingServer, bind, describe, load_state

    sock = bind(args.host, args.port)  # a port in use is refused before minutes of loading
    state = load_state(args.runs, args.name, options, args.device, args.precision, args.trust_unverified)
    server = DrainingServer(build_app(state), state, sock)
    print(
        f"serving {len(state.adapters)} adapter{'s' * (len(state.adapters) != 1)} on {len(state.groups)} "
        f"model{'s' * (len(state.groups) != 1)}:\n{describe(state)}",
        file=sys.stderr,
    )
    print(
        f"listening on http://{server.host}:{server.port} (SIGTERM or Ctrl-C drains, then stops)",
        file=sys.stderr,
        flush=True,
    )
    server.run()
    print("stopped", file=sys.stderr)
    return 0


def _options(args: argparse.Namespace) -> ServeOptions:
    """The limits as given, each checked.

    Raises:
        ConfigError: for a limit below 1, or a port outside 1-65535.
    """
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port must be between 0 (any free port) and 65535, got {args.port}.")
    for flag in (
        "max_concurrent_requests",
        "max_batch_tokens",
        "max_batch_requests",
        "max_client_batch_size",
        "payload_limit",
    ):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}.")
    if args.drain_timeout < 0:
        raise ConfigError(f"--drain-timeout must be 0 or more seconds, got {args.drain_timeout}.")
    return ServeOptions(
        max_concurrent_requests=args.max_concurrent_requests,
        max_batch_tokens=args.max_batch_tokens,
        max_batch_requests=args.max_batch_requests,
        max_client_batch_size=args.max_client_batch_size,
        payload_limit=args.payload_limit,
        auto_truncate=args.auto_truncate,
        api_key=args.api_key,
        drain_timeout_s=args.drain_timeout,
        backend=args.backend,
    )
