"""What a measurement ran on: the CPU model, the instruction sets that change bf16 and int8 speed, cores, date.

Stored beside every figure (`docs/figures.json`, the benchmarks' JSON files), since the same command gives other
timings, and sometimes other last digits, on another CPU.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any

FLAGS = ("avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx512f", "avx2")


def machine() -> dict[str, Any]:
    """The CPU (model name, the flags in FLAGS it has, usable cores) and the UTC date and time."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model,
        "cpu_flags": [f for f in FLAGS if f in flags],
        "cores": cores,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def describe(m: dict[str, Any]) -> str:
    """One line: `AMD EPYC, 2 cores, avx512_bf16 avx512_vnni, no AMX (2026-12-07)`."""
    amx = "AMX" if any(f.startswith("amx") for f in m["cpu_flags"]) else "no AMX"
    flags = " ".join(f for f in m["cpu_flags"] if not f.startswith("amx") and f.startswith("avx512_"))
    return f"{m['cpu']}, {m['cores']} cores, {flags or 'no AVX-512 bf16/VNNI'}, {amx} ({m['date'][:10]})"
