"""The experiments behind the docs' figures (`docs/figures.py` runs them): for each, the commands a user types,
how the figures are read from what they leave, and how each passage of the docs quotes them."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = "../shared/data"


# ---------------------------------------------------------------------------------------------------------- helpers


def run_command(argv: list[str], log: Path) -> float:
    """Run one command from the repository root, its output to `log`; returns its wall time in seconds.

    Raises:
        SystemExit: when the command fails (the log's tail is printed).
    """
    print("  $ " + " ".join(argv), flush=True)
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        sys.exit(f"error: {' '.join(argv)} failed (exit {done.returncode}); see above.")
    print(f"    {seconds:.0f} s", flush=True)
    return seconds


def loratune(*args: str) -> list[str]:
    return ["loratune", *args]


def metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def f4(x: float) -> str:
    return f"{x:.4f}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def thousands(n: float) -> str:
    return f"{n:,.0f}"


def about_minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


# ------------------------------------------------------------------------------------------------------ experiments


@dataclass
class Experiment:
    """Commands to run, the figures read from what they leave, and the passages of the docs that quote them."""

    name: str
    minutes: float  # expected, on 2 idle cores
    commands: list[str]  # as a user types them (the measured ones substitute a scratch folder for runs/...)
    measure: Callable[[Path], dict[str, Any]]
    # (file, render): render(figures) is the passage of `file` that quotes them
    quotes: list[tuple[str, Callable[[dict[str, Any]], str]]] = field(default_factory=list)


# The README's main job, twice (same seed, same machine: identical metrics), and what bf16 does to predict.
README_TRAIN = "--data ../shared/data/sst2 --max-train-samples 4000 --epochs 2"


def measure_readme(work: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    runs = []
    for i in (1, 2):
        out = work / f"sst2-{i}"
        wall = run_command(loratune("train", *README_TRAIN.split(), "--output-dir", str(out)), work / f"train{i}.log")
        m = metrics(out)
        runs.append(m)
        figures[f"command_s_{i}"] = wall
        figures[f"loop_s_{i}"] = m["train_seconds"]
    a, b = runs
    figures["before"] = a["before"]["accuracy"]
    figures["after"] = a["after"]["accuracy"]
    figures["after_fp32"] = a["after_fp32_accuracy"]
    figures["identical"] = same_metrics(a, b)
    figures["threads"] = a["throughput"]["threads"]
    # bf16 against fp32 in predict, over SST-2's validation and test sentences
    import pandas as pd

    texts = pd.concat([pd.read_csv(REPO / DATA / "sst2" / f"{s}.csv") for s in ("validation", "test")])
    inputs = work / "sst2-eval.csv"
    texts[["text"]].to_csv(inputs, index=False)
    labels = {}
    for precision in ("bf16", "fp32"):
        out = work / f"pred-{precision}.csv"
        argv = loratune("predict", str(work / "sst2-1"), "--input", str(inputs), "--output", str(out))
        figures[f"predict_s_{precision}"] = run_command([*argv, "--precision", precision], work / f"{precision}.log")
        labels[precision] = pd.read_csv(out)["predicted_label"]
    figures["predict_texts"] = len(texts)
    figures["bf16_changed"] = int((labels["bf16"] != labels["fp32"]).sum())
    return figures


def same_metrics(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two runs' metrics.json agree in every score (timings, which never repeat, left out)."""

    def scores(m: dict[str, Any]) -> list[Any]:
        epochs = [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in m["history"]]
        return [m["before"], m["after"], m["after_fp32_accuracy"], epochs, m["calibration"], m["significance"]]

    return scores(a) == scores(b)


def readme_quote(f: dict[str, Any]) -> str:
    same = "two runs gave identical metrics" if f["identical"] else "two runs gave DIFFERENT metrics"
    return (
        f"the first command's training loop takes about {f['loop_s_1']:.0f} s and the whole command about "
        f"{f['command_s_1']:.0f} s\n(loading, scoring before and after, the report), reaching {f4(f['after'])} test "
        f"accuracy ({f4(f['before'])} before; {f4(f['after_fp32'])}\nin fp32, as exported); {same}."
    )


def precision_quote(f: dict[str, Any]) -> str:
    ratio = f["predict_s_fp32"] / f["predict_s_bf16"]
    return (
        f"On SST-2's {thousands(f['predict_texts'])}\n  validation and test sentences `loratune predict` took "
        f"{f['predict_s_bf16']:.0f} s in bf16 and {f['predict_s_fp32']:.0f} s in fp32 ({ratio:.1f}x), "
        f"and the two gave\n  different labels to {f['bf16_changed']} sentences."
    )


# GoEmotions with the defaults, all of it; a prediction; the threshold choices judged on test.
GE_TRAIN = "--data ../shared/data/go_emotions"
GE_TEXT = "Thank you so much, this made my day!"


def measure_go_emotions(work: Path) -> dict[str, Any]:
    import pandas as pd

    out = work / "ge"
    wall = run_command(loratune("train", *GE_TRAIN.split(), "--output-dir", str(out)), work / "ge.log")
    m = metrics(out)
    log = work / "ge-predict.log"
    run_command(loratune("predict", str(out), "--text", GE_TEXT), log)
    first = re.search(r"(\w+) \((0\.\d+)\)", log.read_text())
    bench = work / "thresholds.json"
    run_command([sys.executable, "benchmarks/bench_thresholds.py", str(out), "--json", str(bench)], work / "thr.log")
    choices = json.loads(bench.read_text())["choices"]
    shutil.copy(bench, REPO / "benchmarks" / "results" / "bench_thresholds_go_emotions.json")
    predictions = pd.read_parquet(out / "predictions.parquet").head(100)
    counts = [len([x for x in str(p).split("|") if x]) for p in predictions["pred_after"]]
    gold = [len([x for x in str(p).split("|") if x]) for p in predictions["label"]]
    return {
        "command_s": wall,
        "epochs": len(m["history"]),
        "epoch_s": statistics.mean(h["epoch_seconds"] for h in m["history"]),
        "peak_memory_mb": m["peak_memory_mb"],
        "before_macro_f1": m["before"]["f1"],
        "after_macro_f1": m["after"]["f1"],
        "after_micro_f1": m["after"]["micro_f1"],
        "after_subset_accuracy": m["after"]["accuracy"],
        "after_hamming": m["after"]["hamming_loss"],
        "best_epoch": m["best_epoch"],
        "val_macro_f1_by_epoch": [h["val_f1"] for h in m["history"]],
        "predicted_label": first.group(1) if first else None,
        "predicted_probability": float(first.group(2)) if first else None,
        "most_labels_first_100": max(counts),
        "over_labelled_first_100": sum(c > 4 and c > g for c, g in zip(counts, gold, strict=True)),
        "thresholds": {
            k: {
                "macro_f1": v["macro_f1"],
                "min_threshold": v["min_threshold"],
                "over_labelled_first": v["over_labelled_first"],
                "max_labels_first": v["max_labels_first"],
            }
            for k, v in choices.items()
        },
    }


def ge_config_quote(f: dict[str, Any]) -> str:
    return (
        f"took {about_minutes(f['command_s'])} ({f['epoch_s'] / 60:.1f} minutes an epoch, peak memory "
        f"{f['peak_memory_mb'] / 1024:.1f} GB) and scored on the 5,427 test comments macro-F1 "
        f"{f['before_macro_f1']:.3f} → {f['after_macro_f1']:.3f}, micro-F1 {f['after_micro_f1']:.3f}, subset "
        f"accuracy {f['after_subset_accuracy']:.3f}; of the first 100 test comments, none got more than "
        f"{f['most_labels_first_100']} labels"
    )


def ge_predict_quote(f: dict[str, Any]) -> str:
    return f"`{f['predicted_label']} ({f['predicted_probability']:.4f})`"


def ge_thresholds_quote(f: dict[str, Any]) -> str:
    t = f["thresholds"]
    own, shrunk = t["own"], t["shrink-50"]
    return (
        f"test macro-F1 {own['macro_f1']:.3f} with each label's own threshold (the lowest {own['min_threshold']:.2f}; "
        f"{own['over_labelled_first']} of the first 100 test comments got more than 4 labels), "
        f"{shrunk['macro_f1']:.3f} shrunk (the lowest {shrunk['min_threshold']:.2f}; "
        f"{shrunk['over_labelled_first']} over-labelled) and {t['shared']['macro_f1']:.3f} with one shared threshold"
    )


def ge_readme_quote(f: dict[str, Any]) -> str:
    return f"all 43,410 comments, ~{f['command_s'] / 60:.0f} min on 2 cores"


def ge_readme_predict_quote(f: dict[str, Any]) -> str:
    return f"# {f['predicted_label']} ({f['predicted_probability']:.4f})"


def ge_comparing_quote(f: dict[str, Any]) -> str:
    return f"LoRA reaches {pct(f['after_macro_f1'])}"


# sms_spam with and without class weights, over seeds.
SPAM_SEEDS = (42, 1, 2, 3, 4)


def measure_spam(work: Path) -> dict[str, Any]:
    rows, walls = [], []
    for seed in SPAM_SEEDS:
        row: dict[str, Any] = {"seed": seed}
        for weights in ("none", "balanced"):
            out = work / f"spam-{weights}-{seed}"
            argv = loratune("train", "--data", f"{DATA}/sms_spam", "--class-weights", weights, "--seed", str(seed))
            walls.append(run_command([*argv, "--output-dir", str(out)], work / f"spam-{weights}-{seed}.log"))
            after = metrics(out)["after"]
            row[weights] = {"spam_recall": after["per_class"]["spam"]["recall"], "macro_f1": after["f1"]}
        rows.append(row)
    weights = metrics(work / f"spam-balanced-{SPAM_SEEDS[0]}")["class_weights"]
    return {"rows": rows, "command_s": statistics.mean(walls), "weights": weights}


def spam_table(f: dict[str, Any]) -> str:
    lines = [
        "| seed | none: spam recall | none: macro-F1 | balanced: spam recall | balanced: macro-F1 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in f["rows"]:
        seed = f"{row['seed']} (default)" if row["seed"] == 42 else str(row["seed"])
        cells = [f4(row[w][k]) for w in ("none", "balanced") for k in ("spam_recall", "macro_f1")]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    cells = []
    for w in ("none", "balanced"):
        for k in ("spam_recall", "macro_f1"):
            values = [row[w][k] for row in f["rows"]]
            cells.append(f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.3f}")
    lines.append("| mean ± sd | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spam_summary(f: dict[str, Any]) -> str:
    from scipy.stats import binomtest

    diffs = [row["balanced"]["spam_recall"] - row["none"]["spam_recall"] for row in f["rows"]]
    more, less = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    same = len(diffs) - more - less
    p = binomtest(more, more + less).pvalue if more + less else 1.0
    mean = {w: statistics.mean(row[w]["spam_recall"] for row in f["rows"]) for w in ("none", "balanced")}
    w = f["weights"]
    return (
        f"The weights (ham {w['ham']:.2f}, spam {w['spam']:.2f}) found more spam in {more} seeds out of "
        f"{len(diffs)}, as much in {same}, and less in {less}; mean spam recall went from {pct(mean['none'])} to "
        f"{pct(mean['balanced'])} (sign test over the seeds that differ, p = {p:.2f})."
    )


def spam_readme_quote(f: dict[str, Any]) -> str:
    return f"4,128 messages: ~{about_minutes(f['command_s'])}"


# loratune compare: GoEmotions (one seed) and SST-2 (three seeds).
CMP_GE = "--data ../shared/data/go_emotions --max-train-samples 8000 --epochs 2 --methods head,lora,full"
CMP_SST2 = "--data ../shared/data/sst2 --max-train-samples 4000 --epochs 2 --methods head,lora,full --seeds 3"


def measure_compare(args: str) -> Callable[[Path], dict[str, Any]]:
    def measure(work: Path) -> dict[str, Any]:
        out = work / "cmp"
        wall = run_command(loratune("compare", *args.split(), "--output-dir", str(out)), work / "cmp.log")
        return {"command_s": wall, "rows": json.loads((out / "comparison.json").read_text())}

    return measure


def _params(row: dict[str, Any]) -> str:
    share = row["trainable_percent"]
    shown = "<0.01%" if 0 < share < 0.01 else f"{share:.2f}%" if share < 100 else "100%"
    return f"{thousands(row['trainable_params'])} ({shown})"


def _verdict(row: dict[str, Any], unit: str) -> str:
    vs = row.get("vs_lora") or {}
    if vs.get("accuracy_difference") is None:
        return ""
    diff = 100 * vs["accuracy_difference"]
    sign = "+" if diff >= 0 else "−"
    ps = ", ".join(f"{p:.2g}" for p in vs["p_values"])
    verdict = "significant" if vs["significant"] else "not significant"
    return f"{sign}{abs(diff):.1f} pp{unit}, {verdict} (p {ps})"


def compare_ge_table(f: dict[str, Any]) -> str:
    lines = [
        "| method | macro F1 | micro F1 | subset accuracy | train time | trainable params | vs LoRA (McNemar on whole "
        "label sets) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in f["rows"]:
        lines.append(
            f"| {r['method']} | {pct(r['f1'])} | {pct(r['micro_f1'])} | {pct(r['accuracy'])} | "
            f"{r['train_seconds']:.0f} s | {_params(r)} | {_verdict(r, ' subset accuracy')} |"
        )
    return "\n".join(lines)


def compare_sst2_table(f: dict[str, Any]) -> str:
    lines = [
        "| method | test accuracy | macro F1 | train time | trainable params | peak RSS "
        "| vs LoRA (McNemar, per seed) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in f["rows"]:
        lines.append(
            f"| {r['method']} | {pct(r['accuracy'])} ± {100 * r['accuracy_std']:.1f} | {pct(r['f1'])} ± "
            f"{100 * r['f1_std']:.1f} | {r['train_seconds']:.1f} s | {_params(r)} | "
            f"{thousands(r['peak_memory_mb'])} MB | {_verdict(r, '')} |"
        )
    return "\n".join(lines)


def compare_command(args: str, out: str) -> Callable[[dict[str, Any]], str]:
    def compare_command(f: dict[str, Any]) -> str:
        return f"loratune compare {args} --output-dir {out}   # {f['command_s'] / 60:.0f} minutes in all"

    return compare_command


def compare_summary(unit: str) -> Callable[[dict[str, Any]], str]:
    def compare_summary(f: dict[str, Any]) -> str:
        rows = {r["method"]: r for r in f["rows"]}
        lora, full = rows["lora"], rows["full"]
        gap = 100 * (full["f1"] - lora["f1"])
        side = "behind" if gap > 0 else "ahead of"
        vs = full["vs_lora"]
        verdict = "significant" if vs["significant"] else "not significant"
        return (
            f"Here LoRA is {abs(gap):.1f} macro-F1 points {side} full fine-tuning while training "
            f"{lora['trainable_percent']:.2f}% of the weights; in {unit} (full fine-tuning {pct(full['accuracy'])}, "
            f"LoRA {pct(lora['accuracy'])}) the paired test calls the difference {verdict}."
        )

    return compare_summary


# Two processes with the default flags (the README's torchrun line), beside one process with the same global batch.
DDP_TRAIN = "--data ../shared/data/sst2 --max-train-samples 4000 --device cpu"


def measure_distributed(work: Path) -> dict[str, Any]:
    two, one = work / "ddp", work / "one"
    argv = ["torchrun", "--nproc_per_node", "2", "-m", "loratune", "train", *DDP_TRAIN.split()]
    ddp_s = run_command([*argv, "--output-dir", str(two)], work / "ddp.log")
    one_s = run_command(
        loratune("train", *DDP_TRAIN.split(), "--batch-size", "64", "--output-dir", str(one)), work / "one.log"
    )
    a, b = metrics(two), metrics(one)
    return {
        "ddp_command_s": ddp_s,
        "one_command_s": one_s,
        "processes": a["num_processes"],
        "ddp_before": a["before"]["accuracy"],
        "one_before": b["before"]["accuracy"],
        "ddp_after": a["after"]["accuracy"],
        "one_after": b["after"]["accuracy"],
        "test_texts": a["after"]["num_samples"],
    }


def ddp_readme_quote(f: dict[str, Any]) -> str:
    return (
        f"# {f['processes']} processes: ~{about_minutes(f['ddp_command_s'])}, test accuracy {f4(f['ddp_after'])} "
        f"(one process, same global batch: {f4(f['one_after'])})"
    )


def ddp_docs_quote(f: dict[str, Any]) -> str:
    return (
        f"the README's line (two processes, the defaults, 4,000 sentences, 3 epochs) took "
        f"{about_minutes(f['ddp_command_s'])} and scored {f4(f['ddp_before'])} → {f4(f['ddp_after'])} on the "
        f"{thousands(f['test_texts'])} test sentences; one process with the same global batch (`--batch-size 64`) "
        f"took {about_minutes(f['one_command_s'])} and scored {f4(f['one_before'])} → {f4(f['one_after'])}"
    )


# The benchmarks the README's speed table and the CPU-sharing advice come from.
SPEED_JSON = "benchmarks/results/bench_train_cpu_readme.json"
BUSY_JSON = "benchmarks/results/bench_busy_cpu.json"


def measure_speed(work: Path) -> dict[str, Any]:
    run_command([sys.executable, "benchmarks/bench_train.py", "--json", SPEED_JSON], work / "speed.log")
    rows = json.loads((REPO / SPEED_JSON).read_text())["rows"]
    keep = ("variant", "train_samples_per_s", "eval_samples_per_s", "peak_rss_mb", "val_accuracy")
    out = [{k: r[k] for k in keep} for r in rows]
    for r, raw in zip(out, rows, strict=True):
        r["val_predicted_counts"] = raw["extra"].get("val_predicted_counts")
    return {"rows": out}


SPEED_NAMES = {
    "anchor_fp32": "anchor (PEFT + Trainer, fp32)",
    "anchor_bf16": "anchor (PEFT + Trainer, bf16)",
    "loratune": "loratune (defaults: bf16)",
    "loratune_fp32": "loratune `--precision fp32`",
}


def speed_table(f: dict[str, Any]) -> str:
    rows = {r["variant"]: r for r in f["rows"]}

    def vs(r: dict[str, Any], anchor: str) -> str:
        if not r["variant"].startswith("loratune"):
            return ""
        a = rows[anchor]
        return (
            f"train ×{r['train_samples_per_s'] / a['train_samples_per_s']:.2f}, "
            f"eval ×{r['eval_samples_per_s'] / a['eval_samples_per_s']:.2f}, "
            f"RSS ×{r['peak_rss_mb'] / a['peak_rss_mb']:.2f}"
        )

    lines = [
        "| variant | train samples/s | eval samples/s | peak RSS MB | val acc | vs fp32 anchor | vs bf16 anchor |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in f["rows"]:
        lines.append(
            f"| {SPEED_NAMES[r['variant']]} | {r['train_samples_per_s']:.1f} | {r['eval_samples_per_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {f4(r['val_accuracy'])} | {vs(r, 'anchor_fp32')} | {vs(r, 'anchor_bf16')} |"
        )
    return "\n".join(lines)


def speed_anchor_quote(f: dict[str, Any]) -> str:
    anchor = next(r for r in f["rows"] if r["variant"] == "anchor_fp32")
    counts = anchor["val_predicted_counts"] or {}
    total = sum(counts.values())
    if total and max(counts.values()) == total:
        return (
            f"The fp32 anchor's {f4(anchor['val_accuracy'])} is the share of one class in the validation split "
            f"({thousands(anchor['val_accuracy'] * total)} of {thousands(total)} sentences): after this one epoch it "
            "predicts that class for every sentence."
        )
    return f"The fp32 anchor predicts both classes after this one epoch ({f4(anchor['val_accuracy'])})."


def measure_busy(work: Path) -> dict[str, Any]:
    argv = [sys.executable, "benchmarks/bench_busy.py", "--policies", "default,fixed-threads,passive"]
    run_command([*argv, "--json", BUSY_JSON], work / "busy.log")
    return json.loads((REPO / BUSY_JSON).read_text())


def busy_quote(f: dict[str, Any]) -> str:
    cost = 1 - f["passive"]["alone"] / f["default"]["alone"]
    return (
        f"two loratune runs started together on 2 cores each take {f['default']['wall_slowdown']:.1f}x the time\n"
        f"of one alone ({f['fixed-threads']['wall_slowdown']:.1f}x with one thread per core throughout), and a run "
        "alone loses nothing\n([benchmarks/README.md](../benchmarks/README.md#a-busy-cpu)). Setting "
        "`OMP_NUM_THREADS` "
        f"fixes the count and turns\nthis off. On a machine that is always shared, `OMP_WAIT_POLICY=PASSIVE` in the "
        f"environment shares better still\n({f['passive']['wall_slowdown']:.1f}x) at the cost of about "
        f"{100 * cost:.0f}% when loratune runs alone."
    )


# `loratune serve` under load, beside a hand-written pipeline server; eight adapters on one base; the soak.
SERVE_JSON = "benchmarks/results/bench_serve_cpu.json"


def measure_serve(work: Path) -> dict[str, Any]:
    run_command([sys.executable, "benchmarks/bench_serve.py", "--json", SERVE_JSON], work / "serve.log")
    record = json.loads((REPO / SERVE_JSON).read_text())
    keep = ("concurrency", "requests_per_s", "p50_ms", "p95_ms", "p99_ms", "errors", "ratio")
    figures = {k: [{f: row[f] for f in keep if f in row} for row in record[k]] for k in ("baseline", "loratune")}
    for k in ("one_adapter", "eight_adapters"):
        figures[k] = {
            f: record[k][f] for f in ("requests_per_s", "p99_ms", "errors", "peak_rss_mb", "ratio") if f in record[k]
        }
    figures["agreement"] = record["agreement"]
    soak = record["soak"]
    figures["soak"] = {
        f: soak[f]
        for f in (
            "requests", "requests_per_s", "p99_ms", "errors", "bad_requests", "fivexx_before_sigterm", "exit_code",
            "rss_after_warmup_mb", "rss_end_mb", "in_flight_at_sigterm", "in_flight_answered", "in_flight_refused_503",
        )
    }  # fmt: skip
    late = [rss for t, rss in soak["rss_samples"] if t >= 180.0]
    figures["soak"]["rss_last_two_minutes_mb"] = [min(late), max(late)] if late else None
    figures["soak_s"] = record["soak_seconds"]
    return figures


def serve_table(f: dict[str, Any]) -> str:
    lines = [
        "| clients | baseline req/s | loratune req/s | × (per round) | baseline p50 / p99 ms | loratune p50 / p99 ms "
        "| errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b, lt in zip(f["baseline"], f["loratune"], strict=True):
        lines.append(
            f"| {b['concurrency']} | {b['requests_per_s']:.1f} | {lt['requests_per_s']:.1f} | "
            f"{lt['ratio']:.1f} | {b['p50_ms']:.0f} / {b['p99_ms']:.0f} | "
            f"{lt['p50_ms']:.0f} / {lt['p99_ms']:.0f} | {b['errors']} / {lt['errors']} |"
        )
    return "\n".join(lines)


def serve_adapters_quote(f: dict[str, Any]) -> str:
    one, eight, a = f["one_adapter"], f["eight_adapters"], f["agreement"]
    return (
        f"Eight short SST-2 runs on one base, requests spread over them, 32 clients: "
        f"{eight['requests_per_s']:.1f} requests/s ({eight['ratio']:.0%} of one run served alone, "
        f"{one['requests_per_s']:.1f}), peak RSS {eight['peak_rss_mb']:,.0f} MB "
        f"(×{eight['peak_rss_mb'] / one['peak_rss_mb']:.2f} of one run's {one['peak_rss_mb']:,.0f} MB). Their bf16 "
        f"answers against `loratune predict`'s (each run alone, merged): largest probability difference "
        f"{a['max_abs_diff']:.3f}, {a['labels_differ']} of {a['texts']} labels different."
    )


def serve_soak_quote(f: dict[str, Any]) -> str:
    s = f["soak"]
    return (
        f"Soak: the eight-run server, 64 clients for {f['soak_s'] / 60:.0f} minutes, one request in ten bad: "
        f"{s['requests']:,} requests ({s['bad_requests']:,} bad), {s['errors']} answered other than expected, "
        f"{s['fivexx_before_sigterm']} 5xx. RSS {s['rss_after_warmup_mb']:,.0f} MB after the first minute, "
        f"{s['rss_end_mb']:,.0f} MB at the end{_last_minutes(s)}. SIGTERM with the clients still sending: of the "
        f"{s['in_flight_at_sigterm']} requests they had in flight, {s['in_flight_answered']} were answered and "
        f"{s['in_flight_refused_503']} (not yet admitted) refused with 503; the server exited "
        f"{s['exit_code']} once nothing it had admitted was left unanswered."
    )


def _last_minutes(s: dict[str, Any]) -> str:
    band = s.get("rss_last_two_minutes_mb")
    return f" (between {band[0]:,.0f} and {band[1]:,.0f} MB over the last two minutes)" if band else ""


INFER_JSON = "benchmarks/results/bench_infer_cpu.json"
INFER_NAMES = {
    "torch_fp32": "PyTorch fp32",
    "torch_bf16": "PyTorch bf16 (predict's default)",
    "onnx_fp32": "ONNX Runtime fp32",
    "onnx_int8": "ONNX Runtime int8",
}


def measure_infer(work: Path) -> dict[str, Any]:
    run_command([sys.executable, "benchmarks/bench_infer.py", "--json", INFER_JSON], work / "infer.log")
    record = json.loads((REPO / INFER_JSON).read_text())
    keep = ("p50_ms", "p99_ms", "texts_per_s")
    figures: dict[str, Any] = {b: {k: record[b][k] for k in keep} for b in INFER_NAMES}
    for key in ("int8_vs_bf16", "agreement_with_torch_fp32", "sst2_test_accuracy", "texts", "cpu_flags"):
        figures[key] = record[key] if key != "cpu_flags" else record["machine"]["cpu_flags"]
    for key in ("sst2_safetensors_fp32_bytes", "sst2_onnx_fp32_bytes", "sst2_onnx_int8_bytes"):
        figures[key] = record[key]
    for name in ("sst2", "go_emotions"):
        test = record[f"{name}_export_checks"]["test"]
        figures[f"{name}_test"] = {
            b: {"accuracy": test[b]["accuracy"], "f1": test[b]["f1"], "agreement": test[b].get("agreement")}
            for b in ("pytorch_fp32", "onnx_fp32", "onnx_int8")
        }
    return figures


def infer_table(f: dict[str, Any]) -> str:
    mb = 2**20
    sizes = {
        "torch_fp32": f["sst2_safetensors_fp32_bytes"],
        "torch_bf16": f["sst2_safetensors_fp32_bytes"] // 2,
        "onnx_fp32": f["sst2_onnx_fp32_bytes"],
        "onnx_int8": f["sst2_onnx_int8_bytes"],
    }
    lines = [
        "| backend | batch 1 p50 / p99 ms | batch 32 texts/s | SST-2 test accuracy | labels as PyTorch fp32 "
        "| model MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b, name in INFER_NAMES.items():
        r = f[b]
        lines.append(
            f"| {name} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} | {r['texts_per_s']:.0f} | "
            f"{f['sst2_test_accuracy'][b]:.4f} | {f['agreement_with_torch_fp32'][b]:.1%} | {sizes[b] / mb:.0f} |"
        )
    return "\n".join(lines)


def infer_quote(f: dict[str, Any]) -> str:
    ratio, ge, sst2 = f["int8_vs_bf16"], f["go_emotions_test"], f["sst2_test"]
    weights = f["sst2_safetensors_fp32_bytes"]
    return (
        f"int8 against PyTorch bf16, the median of the rounds' ratios: batch-1 p50 latency ×{ratio['p50_ratio']:.2f}, "
        f"batch-32 throughput ×{ratio['throughput_ratio']:.2f}. The int8 graph is "
        f"{f['sst2_onnx_int8_bytes'] / weights:.0%} of the fp32 safetensors' size. The export's own checks on the "
        f"test splits: SST-2 accuracy {sst2['pytorch_fp32']['accuracy']:.4f} (PyTorch fp32), "
        f"{sst2['onnx_fp32']['accuracy']:.4f} (ONNX fp32), {sst2['onnx_int8']['accuracy']:.4f} (int8); GoEmotions "
        f"macro-F1 {ge['pytorch_fp32']['f1']:.4f}, {ge['onnx_fp32']['f1']:.4f} and {ge['onnx_int8']['f1']:.4f}, the "
        f"int8 graph deciding {ge['onnx_int8']['agreement']:.1%} of the comments' label sets as PyTorch does. CPU "
        f"features present: {', '.join(f['cpu_flags'])}."
    )


TUNE_ARGS = "--data ../shared/data/trec --max-train-samples 1000 --max-epochs 2 --n-trials 16"


def measure_tune(work: Path) -> dict[str, Any]:
    import csv

    out = work / "tune-trec"
    wall = run_command(loratune("tune", *TUNE_ARGS.split(), "--output-dir", str(out)), work / "tune.log")
    summary = json.loads((out / "tune.json").read_text())
    with (out / "trials.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    ran = sum(len(r["epoch values"].split()) for r in rows)
    return {
        "minutes": wall / 60,
        "counts": summary["counts"],
        "epochs_full": 2 * len(rows),
        "epochs_ran": ran,
        "best": {k: summary["best"][k] for k in ("number", "validation", "test")},
        "defaults": summary["defaults"],
    }


def tune_quote(f: dict[str, Any]) -> str:
    skipped = 1 - f["epochs_ran"] / f["epochs_full"]
    best, defaults, counts = f["best"], f["defaults"], f["counts"]
    return (
        f"The study took {f['minutes']:.1f} minutes: {counts['COMPLETE']} trials finished and {counts['PRUNED']} "
        f"were pruned after their first epoch, so it ran {f['epochs_ran']} of the {f['epochs_full']} epochs a full "
        f"search would ({skipped:.0%} skipped). The best, trial {best['number']}, reached a validation macro-F1 of "
        f"{best['validation']:.4f} against the defaults' {defaults['validation']:.4f}; trained again and scored on "
        f"the test split, {best['test']['f1']:.4f} against {defaults['test']['f1']:.4f}."
    )


EXPERIMENTS = [
    Experiment(
        "readme",
        3,
        [
            f"loratune train {README_TRAIN} --output-dir runs/sst2 (twice)",
            "loratune predict runs/sst2 --input VALIDATION_AND_TEST.csv --output OUT.csv --precision bf16|fp32",
        ],
        measure_readme,
        [("README.md", readme_quote), ("docs/configuration.md", precision_quote)],
    ),
    Experiment(
        "go_emotions",
        13,
        [
            f"loratune train {GE_TRAIN} --output-dir runs/ge",
            f'loratune predict runs/ge --text "{GE_TEXT}"',
            "python benchmarks/bench_thresholds.py runs/ge",
        ],
        measure_go_emotions,
        [
            ("README.md", ge_readme_quote),
            ("README.md", ge_readme_predict_quote),
            ("docs/configuration.md", ge_config_quote),
            ("docs/configuration.md", ge_predict_quote),
            ("docs/configuration.md", ge_thresholds_quote),
            ("docs/comparing.md", ge_comparing_quote),
        ],
    ),
    Experiment(
        "spam",
        18,
        [f"loratune train --data ../shared/data/sms_spam --class-weights none|balanced --seed S (S in {SPAM_SEEDS})"],
        measure_spam,
        [
            ("README.md", spam_readme_quote),
            ("docs/configuration.md", spam_table),
            ("docs/configuration.md", spam_summary),
        ],
    ),
    Experiment(
        "compare_go_emotions",
        8,
        [f"loratune compare {CMP_GE} --output-dir runs/gecmp"],
        measure_compare(CMP_GE),
        [
            ("docs/comparing.md", compare_ge_table),
            ("docs/comparing.md", compare_command(CMP_GE, "runs/gecmp")),
            ("docs/comparing.md", compare_summary("subset accuracy")),
        ],
    ),
    Experiment(
        "compare_sst2",
        11,
        [f"loratune compare {CMP_SST2} --output-dir runs/cmp"],
        measure_compare(CMP_SST2),
        [
            ("docs/comparing.md", compare_sst2_table),
            ("docs/comparing.md", compare_command(CMP_SST2, "runs/cmp")),
            ("docs/comparing.md", compare_summary("test accuracy, seed by seed")),
        ],
    ),
    Experiment(
        "distributed",
        3,
        [
            f"torchrun --nproc_per_node 2 -m loratune train {DDP_TRAIN} --output-dir runs/ddp",
            f"loratune train {DDP_TRAIN} --batch-size 64 --output-dir runs/one",
        ],
        measure_distributed,
        [("README.md", ddp_readme_quote), ("docs/distributed.md", ddp_docs_quote)],
    ),
    Experiment(
        "speed",
        3,
        [f"python benchmarks/bench_train.py --json {SPEED_JSON}"],
        measure_speed,
        [("README.md", speed_table), ("README.md", speed_anchor_quote)],
    ),
    Experiment(
        "serve",
        16,
        [f"python benchmarks/bench_serve.py --json {SERVE_JSON}"],
        measure_serve,
        [
            ("docs/serving.md", serve_table),
            ("docs/serving.md", serve_adapters_quote),
            ("docs/serving.md", serve_soak_quote),
        ],
    ),  # fmt: skip
    Experiment(
        "infer",
        10,
        [f"python benchmarks/bench_infer.py --json {INFER_JSON}"],
        measure_infer,
        [("docs/onnx.md", infer_table), ("docs/onnx.md", infer_quote)],
    ),
    Experiment(
        "tune",
        5,
        [f"loratune tune {TUNE_ARGS} --output-dir runs/tune-trec"],
        measure_tune,
        [("docs/tuning.md", tune_quote)],
    ),
    Experiment(
        "busy",
        6,
        [f"python benchmarks/bench_busy.py --policies default,fixed-threads,passive --json {BUSY_JSON}"],
        measure_busy,
        [("docs/configuration.md", busy_quote)],
    ),
]
