"""What this machine is good at: the device, whether bf16 is fast here, and the process's peak memory."""

from __future__ import annotations

import functools
import resource
import sys

import torch

from loratune.errors import ConfigError


def resolve_device(device: str) -> str:
    """'auto' becomes 'cuda' when a GPU is visible, else 'cpu'."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but no CUDA GPU is visible; use train.device=cpu or auto.")
    return device


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AMX or AVX512-BF16), where bf16 is several times faster."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return sys.platform == "darwin" and torch.backends.mps.is_available()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: str) -> str:
    """'auto' picks bf16 where the hardware runs it fast, else fp32.

    Raises:
        ConfigError: for fp16 on a CPU, or bf16 on a GPU without it.
    """
    if precision == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if precision == "fp16" and device != "cuda":
        raise ConfigError("Precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32 (train.precision or --precision).")
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("This GPU has no bf16; use precision fp16 or fp32 (train.precision or --precision).")
    return precision


MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def peak_memory_mb(device: str) -> float:
    """Peak memory so far: the process's resident-set high-water mark on CPU, allocated memory on CUDA."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # VmHWM starts afresh at exec; ru_maxrss is inherited from the parent (a notebook kernel calling `compare`
    # would lend its own peak to every child), so it is only the fallback where /proc is missing.
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)
