"""Inference backends side by side: PyTorch fp32, PyTorch bf16 (`loratune predict`'s default on a CPU with bf16),
ONNX Runtime fp32 and ONNX Runtime int8 (`loratune export --format onnx --quantize int8`), on a MiniLM LoRA run.

- Batch 1: p50 / p99 latency of `Predictor.predict_proba([text])` (what `loratune predict` and a request of one
  text run: tokenising, batching, the model, the softmax) over --texts SST-2 sentences, one at a time.
- Batch 32: texts/s over the same sentences in batches of 32.
- Each backend measured in turn, --rounds times over; figures are the medians, ratios per round then their median.
- Accuracy of each backend on the SST-2 test split; the labels of ONNX fp32 and int8 against PyTorch fp32's on
  the timed sentences (what `loratune predict --backend onnx` and `--precision fp32` give); file sizes (the int8
  graph against the fp32 safetensors of `loratune export`). GoEmotions: the export's own check of macro-F1 on the
  run's test split, PyTorch fp32 against the int8 graph.

Runs are trained once into --runs-dir by the README's commands (SST-2: 4,000 sentences, 2 epochs, a few minutes;
GoEmotions: the defaults on all of it, about 13 minutes) unless given with --sst2-run / --go-emotions-run.

Usage:
    python benchmarks/bench_infer.py --json benchmarks/results/bench_infer_cpu.json
    python benchmarks/bench_infer.py --texts 200 --rounds 1                  # a quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, machine  # noqa: E402
from bench_train import REPO_DIR, _child_env  # noqa: E402

SHARED = REPO_DIR.parent / "shared" / "data"
BACKENDS = ("torch_fp32", "torch_bf16", "onnx_fp32", "onnx_int8")


def loratune(*args: Any, log: Path) -> None:
    with log.open("w") as handle:
        subprocess.run(
            [sys.executable, "-m", "loratune", *map(str, args)], check=True, stdout=handle, stderr=subprocess.STDOUT,
            env=_child_env(), cwd=REPO_DIR,
        )  # fmt: skip


def prepare(runs_dir: Path, sst2: Path | None, go_emotions: Path | None) -> dict[str, Path]:
    """The two runs, their ONNX exports (fp32 and int8) and the SST-2 run's merged safetensors export."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    paths = {"sst2": sst2 or runs_dir / "sst2", "go_emotions": go_emotions or runs_dir / "go_emotions"}
    training = {
        "sst2": ["--data", SHARED / "sst2", "--max-train-samples", 4000, "--epochs", 2],
        "go_emotions": ["--data", SHARED / "go_emotions"],
    }
    for name, run in list(paths.items()):
        if not (run / "COMPLETE").exists():
            print(f"training {name} into {run} ...", flush=True)
            loratune("train", *training[name], "--output-dir", run, log=runs_dir / f"{name}.log")
        onnx = runs_dir / f"{name}-onnx"
        if not onnx.exists():
            print(f"exporting {name} to ONNX (fp32 and int8, checked on validation and test) ...", flush=True)
            loratune(
                "export", run, "--format", "onnx", "--quantize", "int8", "--force", "--output-dir", onnx,
                log=runs_dir / f"{name}-onnx.log",
            )  # fmt: skip
        paths[f"{name}-onnx"] = onnx
    merged = runs_dir / "sst2-merged"
    if not merged.exists():
        loratune("export", paths["sst2"], "--output-dir", merged, log=runs_dir / "sst2-merged.log")
    paths["sst2-merged"] = merged
    return paths


def rows(split: str) -> tuple[list[str], list[str]]:
    with (SHARED / "sst2" / f"{split}.csv").open(newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    return [r["text"] for r in table], [r["label"] for r in table]


def predictors(paths: dict[str, Path]) -> dict[str, Any]:
    from loratune.export.onnx_folder import OnnxExport
    from loratune.runs.folder import load_run

    run, export = load_run(paths["sst2"]), OnnxExport.open(paths["sst2-onnx"])
    return {
        "torch_fp32": run.predictor(device="cpu", precision="fp32"),
        "torch_bf16": run.predictor(device="cpu", precision="bf16"),
        "onnx_fp32": export.predictor("model_fp32.onnx"),
        "onnx_int8": export.predictor("model.onnx"),
    }


def latencies(predictor: Any, texts: list[str]) -> list[float]:
    for text in texts[:20]:  # warm-up: kernel selection
        predictor.predict_proba([text])
    times = []
    for text in texts:
        started = time.perf_counter()
        predictor.predict_proba([text])
        times.append(time.perf_counter() - started)
    return times


def throughput(predictor: Any, texts: list[str]) -> float:
    predictor.batch_size = 32
    predictor.predict_proba(texts[:64])
    started = time.perf_counter()
    predictor.predict_proba(texts)
    return len(texts) / (time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(paths: dict[str, Path], n_texts: int, rounds: int) -> dict[str, Any]:
    validation, _ = rows("validation")
    test_texts, test_labels = rows("test")
    texts = (validation + test_texts)[:n_texts]
    found = predictors(paths)
    per_round: dict[str, list[dict[str, float]]] = {b: [] for b in BACKENDS}
    for number in range(1, rounds + 1):
        for backend in BACKENDS:
            times = latencies(found[backend], texts)
            speed = throughput(found[backend], texts)
            row = {"p50_ms": percentile(times, 0.5) * 1e3, "p99_ms": percentile(times, 0.99) * 1e3}
            row["texts_per_s"] = speed
            per_round[backend].append(row)
            print(
                f"  round {number} {backend:<11} batch 1 p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms   "
                f"batch 32 {speed:7.1f} texts/s",
                flush=True,
            )
    result: dict[str, Any] = {}
    for backend in BACKENDS:
        result[backend] = {k: statistics.median(r[k] for r in per_round[backend]) for k in per_round[backend][0]}
        result[backend]["rounds"] = per_round[backend]
    bf16 = per_round["torch_bf16"]
    int8 = per_round["onnx_int8"]
    result["int8_vs_bf16"] = {
        "p50_ratio": statistics.median(i["p50_ms"] / b["p50_ms"] for i, b in zip(int8, bf16, strict=True)),
        "throughput_ratio": statistics.median(
            i["texts_per_s"] / b["texts_per_s"] for i, b in zip(int8, bf16, strict=True)
        ),
    }
    # labels on the timed sentences, each backend with predict's own batches, against PyTorch fp32's
    fresh = predictors(paths)
    labels = {b: [p["label"] for p in fresh[b].predict(texts)] for b in BACKENDS}
    result["agreement_with_torch_fp32"] = {
        b: sum(x == y for x, y in zip(labels[b], labels["torch_fp32"], strict=True)) / len(texts) for b in BACKENDS
    }
    result["sst2_test_accuracy"] = {
        b: sum(p["label"] == y for p, y in zip(fresh[b].predict(test_texts), test_labels, strict=True))
        / len(test_labels)
        for b in BACKENDS
    }
    result["texts"] = len(texts)
    return result


def sizes_and_checks(paths: dict[str, Path]) -> dict[str, Any]:
    sst2 = json.loads((paths["sst2-onnx"] / "export.json").read_text())
    ge = json.loads((paths["go_emotions-onnx"] / "export.json").read_text())
    return {
        "sst2_safetensors_fp32_bytes": (paths["sst2-merged"] / "model.safetensors").stat().st_size,
        "sst2_onnx_fp32_bytes": sst2["files"]["model_fp32.onnx"]["bytes"],
        "sst2_onnx_int8_bytes": sst2["files"]["model.onnx"]["bytes"],
        "sst2_export_checks": sst2["checks"],
        "sst2_int8_problem": sst2["int8_problem"],
        "go_emotions_export_checks": ge["checks"],
        "go_emotions_int8_problem": ge["int8_problem"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=1000, help="SST-2 sentences timed per backend and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-infer-runs")
    parser.add_argument("--sst2-run", type=Path)
    parser.add_argument("--go-emotions-run", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_DIR / "src"))
    info = machine()
    print(describe(info))
    paths = prepare(args.runs_dir, args.sst2_run, args.go_emotions_run)
    record = {"machine": info, "runs": {k: str(v) for k, v in paths.items()}}
    record.update(sizes_and_checks(paths))
    print(f"batch 1 over {args.texts} SST-2 sentences, then batches of 32, each backend in turn, {args.rounds} rounds")
    record.update(measure(paths, args.texts, args.rounds))
    report(record)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")


def report(r: dict[str, Any]) -> None:
    print("backend      p50 ms  p99 ms  texts/s (batch 32)  SST-2 test accuracy  labels = torch fp32")
    for b in BACKENDS:
        print(
            f"{b:<11} {r[b]['p50_ms']:7.2f} {r[b]['p99_ms']:7.2f} {r[b]['texts_per_s']:9.1f}"
            f"{r['sst2_test_accuracy'][b]:20.4f} {r['agreement_with_torch_fp32'][b]:20.1%}"
        )
    ratio = r["int8_vs_bf16"]
    print(
        f"int8 / bf16: p50 latency x{ratio['p50_ratio']:.2f} (target <= 0.5), batch-32 throughput "
        f"x{ratio['throughput_ratio']:.2f} (target >= 1)"
    )
    keys = ("sst2_onnx_int8_bytes", "sst2_onnx_fp32_bytes", "sst2_safetensors_fp32_bytes")
    int8, fp32, weights = (r[k] / 2**20 for k in keys)
    print(
        f"sizes: int8 graph {int8:.1f} MB, fp32 graph {fp32:.1f} MB, fp32 safetensors {weights:.1f} MB "
        f"(int8 / safetensors {int8 / weights:.2f})"
    )
    checked = (("SST-2", "sst2_export_checks", "accuracy"), ("GoEmotions", "go_emotions_export_checks", "f1"))
    for name, key, metric in checked:
        test = r[key]["test"]
        print(
            f"{name} test {metric}: PyTorch fp32 {test['pytorch_fp32'][metric]:.4f}, ONNX fp32 "
            f"{test['onnx_fp32'][metric]:.4f}, int8 {test['onnx_int8'][metric]:.4f} "
            f"(agreement {test['onnx_int8']['agreement']:.1%})"
        )


if __name__ == "__main__":
    main()
