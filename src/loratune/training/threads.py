"""How many threads PyTorch's CPU kernels use while a run trains: the cores that other processes leave free.

Why: PyTorch's CPU kernels run on OpenMP (libgomp in the PyPI wheels), whose idle threads spin for a while after
every parallel region. Two processes that each run one thread per core on the same cores spin through each other's
time slices, and each run becomes several times slower than alone; `OMP_WAIT_POLICY=PASSIVE` avoids that but slows
a run alone (the figures: benchmarks/README.md, "A busy CPU", and "Figures behind the code"). Instead, every few
seconds the CPU time other processes took (from /proc/stat) sets the thread count: a run alone keeps every core,
and two runs side by side take one each. Only on a CPU device, and never where the user fixed the count
(`OMP_NUM_THREADS`, or `torch.set_num_threads` to anything but the default).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


def busy_cpu_seconds() -> float | None:
    """CPU-seconds the machine has spent busy since boot, all processes together; None without /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class ThreadGovernor:
    """Call `tick()` once per step: at most every `interval` seconds it sets torch's thread count to the cores the
    other processes left free over the last interval (at least one). `close()` restores the count it found."""

    def __init__(self, device: str, interval: float = 2.0, fixed: bool = False) -> None:
        """`fixed`: never change the count (`train.deterministic`); `used` then holds only the one it found."""
        import torch

        self.torch, self.interval = torch, interval
        self.initial = torch.get_num_threads()
        self.used = [self.initial]  # every count training ran with, in order of first use
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        busy = busy_cpu_seconds()
        self.enabled = (
            not fixed
            and device == "cpu"
            and busy is not None
            and "OMP_NUM_THREADS" not in os.environ
            and self.initial == self.cores  # torch's default: one thread per core this process may run on
            and self.cores > 1
        )
        self._last = (time.monotonic(), busy, time.process_time())

    def tick(self) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last[0] < self.interval:
            return
        busy, own = busy_cpu_seconds(), time.process_time()
        if busy is None:
            return
        others = max(0.0, (busy - self._last[1]) - (own - self._last[2])) / (now - self._last[0])
        self._last = (now, busy, own)
        threads = max(1, min(self.cores, self.cores - round(others)))
        if threads != self.torch.get_num_threads():
            log.info("Other processes keep %.1f CPUs busy: training on %d thread(s).", others, threads)
            self.torch.set_num_threads(threads)
            if threads not in self.used:
                self.used.append(threads)

    def close(self) -> None:
        if self.enabled and self.torch.get_num_threads() != self.initial:
            self.torch.set_num_threads(self.initial)
