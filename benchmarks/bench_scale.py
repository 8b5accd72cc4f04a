"""Growth: wall time per row and peak RSS of `loratune predict` and `loratune train` as the rows grow.

Rows beyond SST-2's 67,349 training sentences are the same sentences again with a suffix (" #2", " #3", ...), so
every row is a distinct text of realistic length; the labels are the originals'. Each command runs in a fresh
process, measured from outside (`os.wait4`: the child's own peak resident set), one at a time.

- predict: a MiniLM LoRA run (trained here on 2,000 sentences, 1 epoch, unless --run is given) labels N rows of a CSV
  into a CSV; the output is checked to have exactly N rows in input order.
- train: `loratune train` for one epoch on N rows (validation and test: SST-2's 872 validation sentences), beside
  the PEFT + `Trainer` recipe (`_anchor.py`, bf16) at the sizes up to --anchor-max.

Usage:
    python benchmarks/bench_scale.py --predict 10000,100000,1000000 --train 10000,100000,500000 \
        --json benchmarks/results/bench_scale_cpu.json
    python benchmarks/bench_scale.py --predict 2000,20000 --train 2000 --anchor-max 2000    # minutes, not hours
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, machine  # noqa: E402
from _models import minilm_dir  # noqa: E402
from bench_train import DATA_DIR, run_child  # noqa: E402


def sst2_rows() -> list[list[str]]:
    with (DATA_DIR / "train.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        return list(reader)


def write_rows(path: Path, n: int, rows: list[list[str]], header: list[str]) -> None:
    """`n` rows: SST-2's in order, then again with " #2", " #3", ... appended to the text."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i, row in zip(range(n), itertools.cycle(rows), strict=False):
            repeat = i // len(rows) + 1
            text = row[0] if repeat == 1 else f"{row[0]} #{repeat}"
            writer.writerow([i, text] if header == ["id", "text"] else [text, *row[1:]])


def measure_predict(run: Path, sizes: list[int], work: Path) -> list[dict]:
    rows, results = sst2_rows(), []
    for n in sizes:
        source, out = work / f"predict-{n}.csv", work / f"predicted-{n}.csv"
        write_rows(source, n, rows, ["id", "text"])
        child = run_child(["loratune", "predict", str(run), "--input", str(source), "--output", str(out)],
                          work / f"predict-{n}.log")  # fmt: skip
        ids = [int(r["id"]) for r in csv.DictReader(out.open(newline="", encoding="utf-8"))] if child.code == 0 else []
        results.append({
            "rows": n, "exit": child.code, "wall_s": child.wall_s, "ms_per_row": 1000 * child.wall_s / n,
            "peak_rss_mb": child.peak_rss_mb, "output_rows": len(ids), "in_order": ids == list(range(n)),
            "others_cores": child.others_cores,
        })  # fmt: skip
        print(_line("predict", results[-1]), flush=True)
        source.unlink()
        out.unlink(missing_ok=True)
    return results


def measure_train(sizes: list[int], anchor_max: int, work: Path) -> list[dict]:
    rows, results = sst2_rows(), []
    for n in sizes:
        data = work / f"train-{n}"
        data.mkdir()
        write_rows(data / "train.csv", n, rows, ["text", "label"])
        for split in ("validation", "test"):
            shutil.copyfile(DATA_DIR / "validation.csv", data / f"{split}.csv")
        argv = ["loratune", "train", "--data", str(data), "--epochs", "1", "--output-dir", str(work / f"run-{n}")]
        variants = [("loratune", [*argv, "--no-progress"])]
        if n <= anchor_max:
            anchor = [sys.executable, str(Path(__file__).parent / "_anchor.py"), "--data", str(data)]
            anchor += ["--model", str(minilm_dir()), "--epochs", "1", "--batch-size", "32"]
            anchor += ["--learning-rate", "5e-4", "--bf16"]
            variants.append(("anchor_bf16", anchor))
        for name, cmd in variants:
            child = run_child(cmd, work / f"{name}-{n}.log")
            results.append({
                "variant": name, "rows": n, "exit": child.code, "wall_s": child.wall_s,
                "ms_per_row": 1000 * child.wall_s / n, "peak_rss_mb": child.peak_rss_mb,
                "others_cores": child.others_cores, "loop_samples_per_s": _loop_rate(name, work / f"run-{n}", child),
            })  # fmt: skip
            print(_line(f"train {name}", results[-1]), flush=True)
        shutil.rmtree(data)
        shutil.rmtree(work / f"run-{n}", ignore_errors=True)
    return results


def _loop_rate(variant: str, run: Path, child: object) -> float | None:
    """The training loop's own samples per second: the run's metrics.json, or the anchor's JSON line."""
    try:
        if variant == "loratune":
            return json.loads((run / "metrics.json").read_text())["throughput"]["train_samples_per_s"]
        return json.loads(child.stdout.strip().splitlines()[-1])["train_samples_per_s"]  # type: ignore[attr-defined]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _line(what: str, r: dict) -> str:
    extra = f", {r['output_rows']:,} rows out, in order: {r['in_order']}" if "output_rows" in r else ""
    if r.get("loop_samples_per_s"):
        extra += f", loop {r['loop_samples_per_s']:.1f} samples/s"
    return (
        f"{what} {r['rows']:>9,} rows: exit {r['exit']}, {r['wall_s']:.0f} s, {r['ms_per_row']:.2f} ms/row, "
        f"peak RSS {r['peak_rss_mb']:.0f} MB{extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predict", default="10000,100000,1000000", help="row counts to predict ('' for none)")
    parser.add_argument("--train", default="10000,100000,500000", help="row counts to train on ('' for none)")
    parser.add_argument("--anchor-max", type=int, default=10000, help="largest size the anchor trains on")
    parser.add_argument("--run", type=Path, help="a finished run to predict with (default: train one here)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = {k: [int(s) for s in getattr(args, k).split(",") if s] for k in ("predict", "train")}
    record = {"machine": machine(), "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        if sizes["predict"]:
            run = args.run
            if run is None:
                data = work / "small"
                data.mkdir()
                write_rows(data / "train.csv", 2000, sst2_rows(), ["text", "label"])
                for split in ("validation", "test"):
                    shutil.copyfile(DATA_DIR / "validation.csv", data / f"{split}.csv")
                run = work / "run"
                child = run_child(["loratune", "train", "--data", str(data), "--epochs", "1", "--output-dir",
                                   str(run), "--no-progress"], work / "train-small.log")  # fmt: skip
                if child.code != 0:
                    sys.exit(f"error: training the run to predict with failed; see {work / 'train-small.log'}")
            record["predict"] = measure_predict(run, sizes["predict"], work)
        if sizes["train"]:
            record["train"] = measure_train(sizes["train"], args.anchor_max, work)
    print(describe(record["machine"]))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
