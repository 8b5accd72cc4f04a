"""loratune on a busy CPU: one run alone, then two copies started together, under each OpenMP wait policy.

PyTorch's CPU kernels run on OpenMP (GNU libgomp in the PyPI wheels). By default an idle libgomp thread spins for a
while before it sleeps, so that the next parallel region starts without a wake-up. Alone, that wins a little; beside
another process that does the same on the same cores, each spins through time slices the other needs, and both
crawl. This benchmark measures both cases for each policy:

- `default`: nothing set: loratune sets torch's thread count to the cores other processes leave free
  (`loratune.training.threads`), with libgomp's own spin;
- `fixed-threads`: `OMP_NUM_THREADS` = the CPU count, which turns that off: one thread per core throughout, as
  loratune did before;
- `spin` (`GOMP_SPINCOUNT=300000`, libgomp's default), `spin-100k`, `spin-10k`: fixed threads, shorter spins
  before sleeping;
- `passive`: fixed threads, `OMP_WAIT_POLICY=PASSIVE`: idle threads sleep at once;
- `one-thread`: `OMP_NUM_THREADS=1`, no parallel regions at all.

For each it prints the train samples/s of the run alone, of each of the two runs together, and the slowdown of the
slower of the two, in training throughput and in wall time of the whole run (2.0 would be a fair share of 2 cores).
Run it on a quiet machine.

Usage:
    python benchmarks/bench_busy.py                       # MiniLM, 2,000 SST-2 sentences, 1 epoch
    python benchmarks/bench_busy.py --model tiny          # overhead-bound steps suffer most from spinning
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _models import MODELS, model_dir
from bench_train import REPO_DIR, _child_env, write_subsample

POLICIES = {
    "default": {},  # what a user gets: loratune's thread count follows the cores other processes leave free
    "fixed-threads": {"OMP_NUM_THREADS": str(os.cpu_count())},  # one thread per core throughout: loratune before
    "spin": {"GOMP_SPINCOUNT": "300000", "OMP_NUM_THREADS": str(os.cpu_count())},
    "spin-100k": {"GOMP_SPINCOUNT": "100000", "OMP_NUM_THREADS": str(os.cpu_count())},
    "spin-10k": {"GOMP_SPINCOUNT": "10000", "OMP_NUM_THREADS": str(os.cpu_count())},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(os.cpu_count())},
    "one-thread": {"OMP_NUM_THREADS": "1"},
}


def start_run(data: Path, model: Path, out: Path, policy: str) -> subprocess.Popen:
    """Start one `loratune train` with the policy's environment (and none of the others' variables)."""
    env = {k: v for k, v in _child_env().items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    argv = [sys.executable, "-m", "loratune", "train", "--data", str(data), "--model", str(model)]
    argv += ["--output-dir", str(out), "--overwrite", "--no-progress", "--epochs", "1"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return subprocess.Popen(argv, env=env | POLICIES[policy], cwd=REPO_DIR, **quiet)


def train_rate(out: Path) -> float:
    """Train samples/s of a finished run, from its metrics.json (training steps only)."""
    from loratune.runs.files import load_summary  # importable: bench_train put src/ on the path

    return load_summary(out).throughput.train_samples_per_s


def _wall_times(procs: list[subprocess.Popen], started: float) -> list[float]:
    """Wait for every process; return each one's wall time from `started` (polled every 0.1 s)."""
    ended: dict[int, float] = {}
    while len(ended) < len(procs):
        for i, proc in enumerate(procs):
            if i not in ended and proc.poll() is not None:
                if proc.returncode != 0:
                    raise RuntimeError(f"a run exited with {proc.returncode}")
                ended[i] = time.perf_counter() - started
        time.sleep(0.1)
    return [ended[i] for i in range(len(procs))]


def measure(data: Path, model: Path, work: Path, policy: str) -> dict[str, float]:
    """One run alone, then two started together: train samples/s and the whole run's wall time of each."""
    started = time.perf_counter()
    (alone_s,) = _wall_times([start_run(data, model, work / f"{policy}-alone", policy)], started)
    started = time.perf_counter()
    pair_s = _wall_times([start_run(data, model, work / f"{policy}-pair{i}", policy) for i in range(2)], started)
    rates = {"alone": train_rate(work / f"{policy}-alone"), "alone_wall_s": alone_s}
    for i in range(2):
        rates |= {f"pair{i}": train_rate(work / f"{policy}-pair{i}"), f"pair{i}_wall_s": pair_s[i]}
    rates["slowdown"] = max(rates["alone"] / rates[f"pair{i}"] for i in range(2))
    rates["wall_slowdown"] = max(pair_s) / alone_s
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=MODELS)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--policies", default="default,fixed-threads", help=f"Comma-separated from {list(POLICIES)}.")
    parser.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="loratune-busy-"))
    results = {}
    try:
        data = write_subsample(work / "data", args.n_train)
        model = model_dir(args.model, work)
        for policy in args.policies.split(","):
            print(f"measuring {policy} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            results[policy] = measure(data, model, work, policy) | {"wall_s": time.perf_counter() - started}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.model}, {args.n_train} SST-2 sentences, 1 epoch, {os.cpu_count()} CPUs\n")
    print("| policy | alone samples/s | together: run 1 | together: run 2 | training slowdown | whole-run slowdown |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for policy, r in results.items():
        print(
            f"| {policy} | {r['alone']:.1f} | {r['pair0']:.1f} | {r['pair1']:.1f} | ×{r['slowdown']:.2f} "
            f"| ×{r['wall_slowdown']:.2f} ({r['alone_wall_s']:.0f} s alone) |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
