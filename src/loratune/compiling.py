"""Whether the training step runs through `torch.compile`, and in which mode; and falling back to eager
PyTorch, with one log line, when compiling fails, so that a compiler problem never ends a run.

torch is imported inside the functions so that `config` can take the allowed values from here cheaply.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from loratune.errors import ConfigError, first_line

log = logging.getLogger(__name__)

# off: eager PyTorch; on: torch.compile's default mode (Inductor: fused kernels, no Python per op);
# cudagraphs: mode "reduce-overhead" (the same, replayed as CUDA graphs: one launch per step; CUDA only).
COMPILE_MODES = ("auto", "off", "on", "cudagraphs")
_TORCH_MODES = {"on": "default", "cudagraphs": "reduce-overhead"}


def resolve_compile(setting: str, device: str, processes: int = 1) -> str:
    """`auto` becomes `off`: on this project's 2-core CPU compiling takes longer than training a few thousand
    examples (38 s to gain 20% on evaluation), and on a GPU it has not yet been measured to pay for itself.

    Raises:
        ConfigError: for an unknown mode, or cudagraphs off a GPU.
    """
    if setting not in COMPILE_MODES:
        raise ConfigError(f"Unknown compile mode {setting!r}; use one of {list(COMPILE_MODES)} (--compile).")
    if setting == "cudagraphs" and device != "cuda":
        raise ConfigError("--compile cudagraphs needs a CUDA GPU; use --compile on or off on this device.")
    return "off" if setting == "auto" else setting


class StepModel:
    """What a training step calls: `model`, or a `torch.compile` view of it that shares its parameters (so the
    optimizer, checkpoints and evaluation keep using `model` itself, uncompiled).

    Batch lengths vary from step to step, so it compiles with dynamic shapes: one compilation for all lengths
    instead of one per length. The first compiled step's time (compilation included) is `compile_seconds`.
    """

    def __init__(self, model: Any, mode: str) -> None:
        import torch

        self.eager, self.mode = model, mode
        self.module = model if mode == "off" else torch.compile(model, mode=_TORCH_MODES[mode], dynamic=True)
        self.compile_seconds: float | None = None

    @property
    def compiled(self) -> bool:
        return self.module is not self.eager

    def __call__(self, **batch: Any) -> Any:
        if self.compiled and self.mode == "cudagraphs":
            import torch

            # Tells the CUDA graph tree a new step begins, so outputs of the last one may be overwritten.
            torch.compiler.cudagraph_mark_step_begin()
        return self.module(**batch)

    def run(self, step: Any, *args: Any) -> Any:
        """`step(self, *args)` (a forward and backward pass through this model); on a compiler error, once more
        eagerly.

        The first compiled call is timed to the end of its device work: that is where compilation happens.
        """
        first = self.compiled and self.compile_seconds is None
        started = time.perf_counter()
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
