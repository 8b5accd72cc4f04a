"""Where a loratune training step and an evaluation batch spend their time: host against device, syncs, kernels, data.

Runs `loratune train` in this process (the command `bench_train.py` times, on a seeded SST-2 subsample) with
`torch.profiler` around `--steps` training steps after `--warmup` steps, and around the first validation pass.
For each it prints, per step (or per evaluation batch):

- wall time, and the time spent waiting for the next batch (collation and the copy to the device);
- host-device syncs (`cudaStreamSynchronize`, `cudaDeviceSynchronize`, `cudaEventSynchronize`, blocking
  `cudaMemcpy`; and on every device the `aten::_local_scalar_dense` behind `.item()`, which is a sync on a GPU);
- kernels launched and the time the GPU spent in them (so how long it sat idle), and the operators the host ran;
- the operators with the most host time.

Usage:
    python benchmarks/profile_step.py --device cuda --model minilm --json profile.json
    python benchmarks/profile_step.py --model tiny --cprofile          # on a CPU: Python functions by own time
    python benchmarks/profile_step.py --device cuda -- --compile on    # extra `loratune train` flags after --
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _models import MODELS, model_dir
from bench_train import loratune_argv, write_subsample

# The CUDA runtime calls that make the host wait for the device. cudaMemcpyAsync is not one of them (a copy into
# pageable memory waits all the same, but it is followed by a cudaStreamSynchronize, counted here).
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


class _Window:
    """A loader that profiles batches `warmup + 1 .. warmup + steps` of the loader it wraps (all of them when
    `steps` is None), timing how long each `next()` took: the data the step waited for."""

    def __init__(self, loader, session: _Session, warmup: int, steps: int | None):
        self.loader, self.session, self.warmup, self.steps = loader, session, warmup, steps

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        index = 0
        while True:
            if index == self.warmup:
                self.session.start()
            started = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            if self.session.active:
                self.session.data_seconds += time.perf_counter() - started
                self.session.batches += 1
            yield batch
            index += 1
            if self.steps is not None and index == self.warmup + self.steps:
                self.session.stop()
        self.session.stop()


class _Session:
    """One profiled window: torch.profiler (and optionally cProfile) between `start` and `stop`."""

    def __init__(self, name: str, device: str, use_cprofile: bool):
        self.name, self.device, self.use_cprofile = name, device, use_cprofile
        self.active = self.done = False
        self.batches, self.data_seconds, self.wall_seconds = 0, 0.0, 0.0
        self.profiler = self.cprofile = None

    def _sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def start(self) -> None:
        if self.active or self.done:
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        self._sync()
        self.profiler = profile(activities=activities)
        self.profiler.__enter__()
        if self.use_cprofile:
            self.cprofile = cProfile.Profile()
            self.cprofile.enable()
        self.active, self.started = True, time.perf_counter()

    def stop(self) -> None:
        if not self.active:
            return
        self._sync()
        self.wall_seconds = time.perf_counter() - self.started
        if self.cprofile is not None:
            self.cprofile.disable()
        self.profiler.__exit__(None, None, None)
        self.active, self.done = False, True

    def summary(self, trace_dir: Path | None) -> dict:
        """Per-batch figures from the profiler's trace."""
        n = max(self.batches, 1)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trace.json"
            self.profiler.export_chrome_trace(str(path))
            events = json.loads(path.read_text())["traceEvents"]
            if trace_dir is not None:
                trace_dir.mkdir(parents=True, exist_ok=True)
                (trace_dir / f"{self.name}.json").write_text(path.read_text())
        kernels = [e for e in events if e.get("cat") == "kernel"]
        runtime = Counter(e["name"] for e in events if e.get("cat") == "cuda_runtime")
        ops = Counter(e["name"] for e in events if e.get("cat") == "cpu_op")
        # The device time of every operator, from the profiler's own table: the trace's kernel events came back
        # without durations for training steps on an H200 (torch 2.11), though not for evaluation batches.
        averages = self.profiler.key_averages()
        gpu_ms = sum(getattr(e, "self_device_time_total", 0.0) for e in averages) / 1000
        wall_ms = 1000 * self.wall_seconds
        table = averages.table(sort_by="self_cpu_time_total", row_limit=15)
        result = {
            "batches": self.batches,
            "wall_ms_per_batch": wall_ms / n,
            "data_wait_ms_per_batch": 1000 * self.data_seconds / n,
            "kernels_per_batch": len(kernels) / n,
            "gpu_busy_ms_per_batch": gpu_ms / n if self.device == "cuda" else None,
            "gpu_idle_share": 1 - gpu_ms / wall_ms if self.device == "cuda" and wall_ms else None,
            "syncs_per_batch": sum(v for k, v in runtime.items() if k in SYNC_CALLS) / n,
            "sync_calls": {k: v for k, v in runtime.items() if k in SYNC_CALLS},
            "async_copies_per_batch": runtime.get("cudaMemcpyAsync", 0) / n,
            "item_calls_per_batch": ops.get("aten::_local_scalar_dense", 0) / n,
            "host_ops_per_batch": sum(ops.values()) / n,
            "kernel_launches_per_batch": sum(v for k, v in runtime.items() if "LaunchKernel" in k) / n,
            "top_host_ops": table,
        }
        if self.cprofile is not None:
            out = io.StringIO()
            pstats.Stats(self.cprofile, stream=out).sort_stats("tottime").print_stats(30)
            result["cprofile"] = out.getvalue()
        return result


def profile_run(argv: list[str], device: str, warmup: int, steps: int, use_cprofile: bool) -> dict[str, _Session]:
    """Run `loratune train argv` with the training loop's loader and the first validation pass profiled."""
    import loratune.training.loop as loop
    from loratune.cli import main

    sessions = {"train_step": _Session("train_step", device, use_cprofile)}
    sessions["eval_batch"] = _Session("eval_batch", device, use_cprofile)
    train_steps, evaluate = loop._Loop._steps, loop.evaluate

    def profiled_steps(self, loader, epoch):  # one epoch's optimizer steps, through the profiling window
        return train_steps(self, _Window(loader, sessions["train_step"], warmup, steps), epoch)

    def profiled_evaluate(model, loader, *args, **kwargs):
        session = sessions["eval_batch"]
        if session.done:
            return evaluate(model, loader, *args, **kwargs)
        return evaluate(model, _Window(loader, session, 0, None), *args, **kwargs)

    loop._Loop._steps, loop.evaluate = profiled_steps, profiled_evaluate
    try:
        code = main(argv)
    finally:
        loop._Loop._steps, loop.evaluate = train_steps, evaluate
    if code != 0:
        raise SystemExit(f"loratune train exited with {code}")
    return sessions


def _print(name: str, result: dict) -> None:
    print(f"\n== {name}: {result['batches']} batches profiled ==")
    for key, value in result.items():
        if key in ("top_host_ops", "cprofile", "sync_calls") or value is None:
            continue
        print(f"{key:>28}: {value:.2f}" if isinstance(value, float) else f"{key:>28}: {value}")
    print(f"{'sync_calls':>28}: {result['sync_calls']}")
    print(result["top_host_ops"])
    if "cprofile" in result:
        print(result["cprofile"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=MODELS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=15, help="Steps run before the profiled ones.")
    parser.add_argument("--steps", type=int, default=30, help="Training steps profiled.")
    parser.add_argument("--cprofile", action="store_true", help="Also list Python functions by their own time.")
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    parser.add_argument("--trace-dir", type=Path, help="Keep the chrome traces here (chrome://tracing, Perfetto).")
    args = parser.parse_args(own)
    args.epochs = 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="loratune-profile-") as tmp:
        work = Path(tmp)
        args.model_path = model_dir(args.model, work)
        data = write_subsample(work / "data", args.n_train)
        command = loratune_argv(data, work / "run", args, extra)[3:]  # drop `python -m loratune`
        sessions = profile_run(command, args.device, args.warmup, args.steps, args.cprofile)
        results = {name: s.summary(args.trace_dir) for name, s in sessions.items() if s.done}
    settings = {k: str(v) for k, v in vars(args).items()} | {"extra": extra}
    for name, result in results.items():
        _print(name, result)
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, **results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
