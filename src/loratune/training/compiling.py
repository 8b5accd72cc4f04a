"""Whether the training step runs through `torch.compile`; and falling back to eager
PyTorch, with one log line, when compiling fails, so that a compiler problem never ends a run.

torch is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from loratune.config import COMPILE_MODES
from loratune.errors import ConfigError, first_line

log = logging.getLogger(__name__)


def resolve_compile(setting: str) -> str:
    """`auto` becomes `off`: where measured (a 2-core CPU, an H200), compiling the training step took longer than
    the faster steps gave back on runs of usual size (benchmarks/README.md, "Figures behind the code").

    Raises:
        ConfigError: for an unknown mode.
    """
    if setting not in COMPILE_MODES:
        raise ConfigError(f"Unknown compile mode {setting!r}; use one of {list(COMPILE_MODES)} (--compile).")
    return "off" if setting == "auto" else setting


class StepModel:
    """What a training step calls: `model`, or a `torch.compile` view of it that shares its parameters (so the
    optimizer, checkpoints and evaluation keep using `model` itself, uncompiled).

    Batch lengths vary from step to step, so it compiles with dynamic shapes: one compilation for all lengths
    instead of one per length. The first compiled step's time (compilation included) is `compile_seconds`.
    """

    def __init__(self, model: Any, mode: str) -> None:
        import torch

        self.eager = model
        self.module = model if mode == "off" else torch.compile(model, dynamic=True)
        self.compile_seconds: float | None = None

    @property
    def compiled(self) -> bool:
        return self.module is not self.eager

    def __call__(self, **batch: Any) -> Any:
        return self.module(**batch)

    def run(self, step: Any, *args: Any) -> Any:
        """`step(self, *args)` (a forward and backward pass through this model); on a compiler error, once more
        eagerly.

        The first compiled call is timed to the end of its device work: that is where compilation happens.
        """
        first = self.compiled and self.compile_seconds is None
        started = time.perf_counter() if first else 0.0
        try:
            result = step(self, *args)
        except Exception as exc:  # noqa: BLE001  (whatever the compiler raises, eager PyTorch may still run)
            if not self.compiled:
                raise
            log.warning(
                "torch.compile failed (%s: %s); training goes on without it (--compile off hides this).",
                type(exc).__name__,
                first_line(exc),
            )
            self.module = self.eager
            return step(self, *args)
        if first:
            _synchronize(self.eager)
            self.compile_seconds = time.perf_counter() - started
        return result


def _synchronize(model: Any) -> None:
    import torch

    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
