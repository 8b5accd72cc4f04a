"""What a long command says while it works: a line as each phase starts, and a bar (or, in a log, a plain line now
and then, with an ETA) through loops over many batches. Everything goes to stderr, so stdout stays the answer.

Why not tqdm alone: on a terminal it is used, but in a log (CI, nohup, a file) its carriage-return frames pile up
into one unreadable line; there a plain line every so often says the same.
"""

from __future__ import annotations

import sys
import time


def announce(text: str, enabled: bool = True) -> None:
    """One line as a phase starts, such as 'scoring before training: 872 test texts'."""
    if enabled:
        print(f"{text} ...", file=sys.stderr, flush=True)


# In a log, a progress line at least this often (seconds), so no phase is silent for more than about 5 s.
LOG_EVERY_S = 4.0


class Progress:
    """A redrawn bar on a terminal; in a log a plain line every LOG_EVERY_S seconds, with the rate and an ETA."""

    def __init__(self, total: int, desc: str, enabled: bool, every_s: float = LOG_EVERY_S, unit: str = "step") -> None:
        self.total, self.desc, self.every_s, self.unit = total, desc, every_s, unit
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit=unit)
        self.started = self.last = time.perf_counter()
        self.lines = 0

    def _due(self, step: int) -> bool:
        # the last step closes a loop that showed progress, or that took long enough to have shown some
        if step >= self.total:
            return self.lines > 0 or time.perf_counter() - self.started >= self.every_s
        return time.perf_counter() - self.last >= self.every_s

    def wants_loss(self, step: int) -> bool:
        """Reading the loss syncs the device, so only on the steps that show it."""
        if not self.enabled:
            return False
        return step % 10 == 0 if self.bar is not None else self._due(step)

    def update(self, step: int, loss: float | None = None) -> None:
        """Step `step` of `total` is done; `loss` (when read) is shown beside it."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}")
            return
        if not self._due(step):
            return
        self.last = now = time.perf_counter()
        self.lines += 1
        elapsed = max(now - self.started, 1e-9)
        rate = step / elapsed
        shown = f": loss {loss:.4f}" if loss is not None else ""
        eta = f", about {(self.total - step) / rate:.0f} s left" if step < self.total else f", {elapsed:.0f} s"
        counted = (
            f"{self.unit} {step}/{self.total}" if self.unit == "step" else f"{step:,}/{self.total:,} {self.unit}s"
        )
        print(f"{self.desc} {counted}{shown} ({rate:.1f} {self.unit}s/s{eta})", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
