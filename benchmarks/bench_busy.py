"""loratune on a busy CPU: one run alone, then two copies started together, under each OpenMP wait policy.

PyTorch's CPU kernels run on OpenMP (GNU libgomp in the PyPI wheels). By default an idle libgomp thread spins for a
while before it sleeps, so that the next parallel region starts without a wake-up. Alone, that wins a little; beside
another process that does the same on the same cores, each spins through time slices the other needs, and both
crawl. This benchmark measures both cases for each policy:

- `spin`: libgomp's own default (`GOMP_SPINCOUNT=300000`, what it does when nothing is set; loratune's default);
- `spin-100k`, `spin-10k`: shorter spins before sleeping;
- `passive`: `OMP_WAIT_POLICY=PASSIVE`, idle threads sleep at once;
- `one-thread`: `OMP_NUM_THREADS=1`, no parallel regions at all.

For each it prints the train samples/s of the run alone, of each of the two runs together, and the slowdown
(alone time / together time per run; 2.0 would be a fair share of 2 cores). Run it on a quiet machine.

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
    "spin": {"GOMP_SPINCOUNT": "300000"},
    "spin-100k": {"GOMP_SPINCOUNT": "100000"},
    "spin-10k": {"GOMP_SPINCOUNT": "10000"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
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
    sys.path.insert(0, str(REPO_DIR / "src"))
    from loratune.artifacts import load_summary

    return load_summary(out).throughput.train_samples_per_s


def measure(data: Path, model: Path, work: Path, policy: str) -> dict[str, float]:
    """One run alone, then two started together; train samples/s of each."""
    alone = start_run(data, model, work / f"{policy}-alone", policy)
    if alone.wait() != 0:
        raise RuntimeError(f"{policy}: the run alone failed")
    pair = [start_run(data, model, work / f"{policy}-pair{i}", policy) for i in range(2)]
    if any(p.wait() != 0 for p in pair):
        raise RuntimeError(f"{policy}: a run of the pair failed")
    rates = {"alone": train_rate(work / f"{policy}-alone")}
    rates |= {f"pair{i}": train_rate(work / f"{policy}-pair{i}") for i in range(2)}
    rates["slowdown"] = max(rates["alone"] / rates[f"pair{i}"] for i in range(2))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=MODELS)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--policies", default=",".join(POLICIES), help=f"Comma-separated from {list(POLICIES)}.")
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
    print("| policy | alone samples/s | together: run 1 | together: run 2 | slowdown per run |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for policy, r in results.items():
        print(f"| {policy} | {r['alone']:.1f} | {r['pair0']:.1f} | {r['pair1']:.1f} | ×{r['slowdown']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
