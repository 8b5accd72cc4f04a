"""Load and tokenise a large CSV through loratune's data path and report time and peak memory.

The CSV (default 500,000 rows) is built from SST-2's train sentences, repeated with a row number so no two texts
are equal. loratune keeps it in Arrow tables that `datasets` memory-maps, so the process's resident memory stays
far below what the same texts would take as Python strings.

    python benchmarks/bench_data.py --rows 500000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.csv"


def vm_hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmHWM:"))


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmRSS:"))


def write_csv(path: Path, rows: int) -> int:
    with SST2.open(newline="", encoding="utf-8") as handle:
        source = list(csv.DictReader(handle))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(rows):
            row = source[i % len(source)]
            writer.writerow([f"{row['text']} ({i})", row["label"]])
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--json", help="Also write the figures here.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.csv"
        size = write_csv(path, args.rows)
        os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "cache")  # a cold cache: the load is really measured

        import datasets

        from loratune.config import DataArgs
        from loratune.data.batches import tokenize
        from loratune.data.splits import load_splits
        from loratune.model.loading import load_tokenizer
        from loratune.model.names import default_model_path

        datasets.disable_progress_bars()
        tokenizer = load_tokenizer(default_model_path())
        start_rss = rss_mb()
        started = time.perf_counter()
        splits = load_splits(DataArgs(path=str(path)))
        loaded = time.perf_counter()
        encoded, truncated = tokenize(splits.train, tokenizer, 128)
        done = time.perf_counter()
        figures = {
            "rows": args.rows,
            "csv_mb": size / 2**20,
            "train_rows": len(encoded),
            "load_s": loaded - started,
            "tokenise_s": done - loaded,
            "rows_per_s": len(encoded) / (done - loaded),
            "rss_before_mb": start_rss,
            "rss_after_mb": rss_mb(),
            "peak_rss_mb": vm_hwm_mb(),
            "truncated": truncated,
            "arrow_in_memory": encoded.cache_files == [],
        }
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:,.1f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
