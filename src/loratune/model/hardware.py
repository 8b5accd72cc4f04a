"""Device and numeric precision, decided in one place: the allowed values, what `auto` means on this machine,
how a model is held for training (frozen weights in bf16, trainable ones in fp32) and for inference (the whole
model in one dtype), the autocast context, and the process's peak memory.

torch is imported inside the functions so that `config` (and `loratune validate`) can take the allowed values
from here without importing torch (about 1.5 s here).
"""

from __future__ import annotations

import contextlib
import functools
import resource
import sys
from typing import Any

from loratune.config import DEVICES, PRECISIONS
from loratune.errors import ConfigError


def resolve_device(device: str) -> str:
    """'auto' becomes 'cuda' when a GPU is visible, else 'cpu'.

    Raises:
        ConfigError: for an unknown device, or cuda without a visible GPU.
    """
    import torch

    if device not in DEVICES:
        raise ConfigError(f"Unknown device {device!r}; use one of {list(DEVICES)} (--device or train.device).")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("Device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto.")
    return device


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AMX or AVX512-BF16), where bf16 is several times faster."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        import torch

        return sys.platform == "darwin" and torch.backends.mps.is_available()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: str) -> str:
    """'auto' picks bf16 where the hardware runs it fast, else fp32.

    Raises:
        ConfigError: for an unknown precision, fp16 on a CPU, or bf16 on a GPU without it.
    """
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r}; use one of {list(PRECISIONS)} (--precision).")
    if precision == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if precision == "fp16" and device != "cuda":
        raise ConfigError("Precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32 (train.precision or --precision).")
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("This GPU has no bf16; use precision fp16 or fp32 (train.precision or --precision).")
    return precision


def inference_precision(precision: str, device: str, trained: str) -> str:
    """The precision to score a run in: `precision` when given; for 'auto', the run's own (`trained`, in which
    its "after" was scored) where this device runs it fast, else what 'auto' picks here.

    Raises:
        ConfigError: as `resolve_precision`.
    """
    here = resolve_precision(precision, device)
    if precision != "auto":
        return here
    if trained == "fp32" or trained == here or (trained == "fp16" and device == "cuda"):
        return trained
    return here


def dtype(precision: str) -> Any:
    """The torch dtype of a resolved precision."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    """Mixed precision for a forward pass: autocast to bf16/fp16, or nothing for fp32.

    loratune autocasts itself rather than through `Accelerator(mixed_precision=...)`: Accelerate keeps that
    setting in process-global state that refuses to change, and one process (a notebook, the tests) may run
    several trainings at different precisions.
    """
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype(precision))


def attention_kernels(device: str) -> contextlib.AbstractContextManager:
    """The attention kernels a GPU may pick (scaled_dot_product_attention): flash, memory-efficient or math, not
    cuDNN's.

    Why: cuDNN's attention builds a graph on the host for each new shape, and batch lengths vary from step to step,
    so a small model's step waits on the host far longer than the GPU works (profiled: benchmarks/README.md, "GPU"
    and "Figures behind the code").
    """
    if device != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def grad_scaler(precision: str, device: str) -> Any:
    """fp16 needs its loss scaled to keep small gradients; bf16 and fp32 get a scaler that does nothing."""
    import torch

    return torch.amp.GradScaler(device, enabled=precision == "fp16")


def prepare_for_training(model: Any, precision: str, distributed_type: str) -> None:
    """Hold frozen weights in the autocast dtype so autocast does not cast them again on every step.

    Trainable weights (adapters, head) stay fp32, so the optimizer updates full-precision values. FSDP and
    DeepSpeed shard and cast weights themselves, so they get the model as loaded.
    """
    if precision == "fp32" or distributed_type not in ("NO", "MULTI_CPU", "MULTI_GPU"):
        return
    low = dtype(precision)
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point():
            param.data = param.data.to(low)
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and "position" not in name:
            buffer.data = buffer.data.to(low)
    # PEFT casts each adapter's (bf16) input up to its fp32 weights' dtype; under autocast the adapter matmul
    # runs in bf16 anyway, so the round trip is pure cost (about 9% of a CPU step, all-MiniLM-L6-v2, batch 32).
    # `cast_input_dtype_enabled` is PEFT's own switch (`peft.helpers.disable_input_dtype_casting`).
    for module in model.modules():
        if hasattr(module, "_cast_input_dtype"):
            module.cast_input_dtype_enabled = False


def prepare_for_inference(model: Any, precision: str) -> Any:
    """The whole model in one dtype (no autocast, nothing cast per batch), in eval mode."""
    return model.to(dtype(precision)).eval()


def peak_memory_mb(device: str) -> float:
    """Peak memory so far: the process's resident-set high-water mark on CPU, allocated memory on CUDA."""
    if device == "cuda":
        import torch

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


@functools.cache
def _glibc() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def return_freed_memory() -> None:
    """Hand the heap memory freed since the last call back to the operating system (glibc's `malloc_trim`).

    Why: tensors of ever new shapes (batches of texts of every length) leave glibc's heap fragmented, and glibc
    keeps freed pages in the process, so the resident set creeps up with the rows processed even though nothing is
    held. Trimming once per chunk of 1,024 texts kept `predict` at 639-766 MB over 90,000 SST-2 rows against
    692-1,088 MB without it (639-700 MB with batch lengths rounded too), at the same speed, and took `train`'s peak
    from the fp32 re-score (1,464 MB) back to training's own (1,281 MB): benchmarks/README.md, "Memory: where it
    goes". A no-op without glibc.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
