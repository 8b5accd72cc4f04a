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


class Progress:
    """A redrawn bar on a terminal; in a log a plain line every `log_every` steps, with the rate and an ETA."""

    def __init__(self, total: int, desc: str, enabled: bool, log_every: int = 200) -> None:
        self.total, self.desc, self.log_every = total, desc, max(1, log_every)
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
        self.started = time.perf_counter()

    def wants_loss(self, step: int) -> bool:
        """Reading the loss syncs the device, so only on the steps that show it."""
        return self.enabled and step % (10 if self.bar is not None else self.log_every) == 0

    def update(self, step: int, loss: float | None = None) -> None:
        """Step `step` of `total` is done; `loss` (when read) is shown beside it."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}")
            return
        if step % self.log_every and not (step == self.total and self.total > self.log_every):
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = step / elapsed
        shown = f": loss {loss:.4f}" if loss is not None else ""
        eta = f", about {(self.total - step) / rate:.0f} s left" if step < self.total else f", {elapsed:.0f} s"
        print(f"{self.desc} step {step}/{self.total}{shown} ({rate:.1f} steps/s{eta})", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
