"""Where a command's memory goes: resident set size sampled through each phase it announces.

Runs one command (by default `loratune train` with the README settings: 2,000 SST-2 sentences, loratune's defaults)
in a child process, samples its RSS from `/proc/PID/status` 20 times a second, and attributes each sample to the
phase the command last announced on stderr (loratune's progress lines, e.g. "scoring before", "epoch 1/3",
"writing the report"). Prints, per phase: the RSS when it started, its peak, and what it added to the peak so far.
The phase where the whole command peaks is the one to look at when the peak grows.

Usage:
    python benchmarks/memory_phases.py                               # loratune train, README settings
    python benchmarks/memory_phases.py --n-train 100000 --epochs 1   # rows repeated with a suffix, as bench_scale
    python benchmarks/memory_phases.py -- python benchmarks/_anchor.py --data DIR --model DIR --bf16
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, machine  # noqa: E402
from bench_scale import sst2_rows, write_rows  # noqa: E402
from bench_train import DATA_DIR, REPO_DIR, _child_env  # noqa: E402

SAMPLE_S = 0.05
# A progress line's moving parts (counts, percentages, rates, ETAs), removed so that one phase keeps one name.
MOVING = re.compile(r"\s*(\d[\d,./:]*\s*(%|s|it/s|texts/s|rows)?|ETA.*|\(.*\)|\[.*\])\s*")


def phase_name(line: str) -> str:
    """A stderr line reduced to the phase it announces: 'epoch 1/3  40% 12 s ETA 20 s' -> 'epoch'."""
    words = MOVING.sub(" ", line.replace("\r", " ")).split()
    return " ".join(words[:5]) or "?"


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def profile(argv: list[str]) -> tuple[int, list[dict]]:
    """Run `argv`; return its exit status and one record per phase, in order."""
    phases: list[dict] = [{"phase": "starting", "start_mb": 0.0, "peak_mb": 0.0, "t0": time.perf_counter()}]
    lock = threading.Lock()
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=_child_env(), cwd=REPO_DIR)

    def read_stderr() -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            for part in raw.decode(errors="replace").split("\r"):
                name = phase_name(part)
                if not part.strip() or name == "?":
                    continue
                with lock:
                    if name != phases[-1]["phase"]:
                        now = _rss_mb(proc.pid) or phases[-1]["peak_mb"]
                        phases.append({"phase": name, "start_mb": now, "peak_mb": now, "t0": time.perf_counter()})

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    while proc.poll() is None:
        rss = _rss_mb(proc.pid)
        if rss is not None:
            with lock:
                phases[-1]["peak_mb"] = max(phases[-1]["peak_mb"], rss)
        time.sleep(SAMPLE_S)
    reader.join(timeout=5)
    end = time.perf_counter()
    for this, after in zip(phases, [*phases[1:], {"t0": end}], strict=True):
        this["seconds"] = after["t0"] - this.pop("t0")
    return proc.returncode, phases


def merged(phases: list[dict]) -> list[dict]:
    """Phases that recur (each epoch's progress lines) merged into one row each, in first-seen order."""
    rows: dict[str, dict] = {}
    for p in phases:
        row = rows.setdefault(p["phase"], {**p, "seconds": 0.0})
        row["peak_mb"] = max(row["peak_mb"], p["peak_mb"])
        row["seconds"] += p["seconds"]
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=None, help="default: loratune's")
    parser.add_argument("command", nargs="*", help="a command to profile instead of loratune train (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memory-phases-") as tmp:
        argv = args.command
        if not argv:
            data = Path(tmp) / "data"
            data.mkdir()
            write_rows(data / "train.csv", args.n_train, sst2_rows(), ["text", "label"])
            for split in ("validation", "test"):
                (data / f"{split}.csv").write_bytes((DATA_DIR / "validation.csv").read_bytes())
            argv = ["loratune", "train", "--data", str(data), "--output-dir", str(Path(tmp) / "run")]
            argv += ["--epochs", str(args.epochs)] if args.epochs else []
        code, phases = profile(argv)
    top = 0.0
    print(f"{'phase':<44} {'start MB':>9} {'peak MB':>8} {'adds':>6} {'s':>6}")
    for p in merged(phases):
        adds = max(0.0, p["peak_mb"] - top)
        top = max(top, p["peak_mb"])
        print(f"{p['phase'][:44]:<44} {p['start_mb']:>9.0f} {p['peak_mb']:>8.0f} {adds:>6.0f} {p['seconds']:>6.1f}")
    print(f"exit {code}; peak {top:.0f} MB; {describe(machine())}")


if __name__ == "__main__":
    main()
