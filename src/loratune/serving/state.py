"""What a server's routes, its admission and its process share: the adapters, the batcher, the metrics, the phase
(starting, ready, draining) and the count of requests in flight."""

from __future__ import annotations

import time

from loratune.serving.adapters import ModelGroup, ServedAdapter
from loratune.serving.api import NOT_FOUND, VALIDATION, ClientError
from loratune.serving.batcher import Batcher
from loratune.serving.metrics import ServerMetrics
from loratune.serving.options import ServeOptions


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
