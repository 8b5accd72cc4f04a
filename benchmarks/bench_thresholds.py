"""Multi-label thresholds chosen on validation, judged on test: which guard against overfitting rare labels works.

Scores a finished multi-label run's validation and test splits once (calibrated probabilities, as `predict` gives
them), then, for each way of choosing per-label thresholds on validation, prints the test macro-F1, micro-F1,
subset accuracy, the lowest threshold, and how many of the first 100 test texts get more than 4 labels while their
gold set has at most 4 (the over-labelling a user sees first). The choices (`loratune.thresholds`):

- `own`: each label's F1-best threshold on validation (loratune before; the GoEmotions replications);
- `shared`: one threshold for every label, the micro-F1-best;
- `shrink-M`: each label's own threshold pulled toward the shared one, keeping n / (n + M) of its own, where n is
  the label's validation positives (loratune's default is `shrink-50`);
- `floor-F`: each label's own threshold, at least F.

Usage:
    python benchmarks/bench_thresholds.py RUN [--json benchmarks/results/bench_thresholds_go_emotions.json]

RUN is a finished multi-label run, e.g. `loratune train --data ../shared/data/go_emotions --output-dir RUN`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, machine  # noqa: E402

import loratune  # noqa: E402
from loratune.data.splits import load_run_split  # noqa: E402
from loratune.thresholds import SHRINKAGE, fit_thresholds  # noqa: E402

CHOICES = {
    "own": {"shrinkage": 0.0},
    "shared": {"shrinkage": float("inf")},
    "shrink-10": {"shrinkage": 10.0},
    "shrink-25": {"shrinkage": 25.0},
    "shrink-50": {"shrinkage": 50.0},
    "shrink-100": {"shrinkage": 100.0},
    "shrink-200": {"shrinkage": 200.0},
    "floor-0.1": {"shrinkage": 0.0, "floor": 0.1},
    "floor-0.2": {"shrinkage": 0.0, "floor": 0.2},
    "floor-0.3": {"shrinkage": 0.0, "floor": 0.3},
}
FIRST = 100  # the first test texts, checked for over-labelling
MOST = 4  # labels a text may get unless its gold set has more


def split_arrays(run: object, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated probabilities, 0/1 gold matrix) of one split of the run's own data, in file order."""
    cfg = run.config  # type: ignore[attr-defined]
    ds = load_run_split(cfg.data, split, run.labels, cfg.train.seed)  # type: ignore[attr-defined]
    predictor = run.predictor()  # type: ignore[attr-defined]
    predictor.progress = f"scoring {split}"
    probs = predictor.predict_proba(list(ds["text"])).numpy().astype(np.float64)
    return probs, np.asarray(ds["label"], dtype=np.float64)


def judge(thresholds: np.ndarray, probs: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    decided, truth = probs >= thresholds, gold > 0.5
    counts, gold_counts = decided[:FIRST].sum(axis=1), truth[:FIRST].sum(axis=1)
    return {
        "macro_f1": float(f1_score(truth, decided, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(truth, decided, average="micro", zero_division=0)),
        "subset_accuracy": float((decided == truth).all(axis=1).mean()),
        "min_threshold": float(thresholds.min()),
        "max_labels_first": int(counts.max()),
        "over_labelled_first": int(((counts > MOST) & (counts > gold_counts)).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="keep the scored probabilities in this .npz")
    args = parser.parse_args()
    import datasets

    datasets.disable_progress_bars()
    started = time.perf_counter()
    run = loratune.load_run(args.run)
    if not run.task.needs_thresholds:
        sys.exit(f"error: {args.run} is not a multi-label run; train one (for example on go_emotions) first.")
    if args.cache and args.cache.exists():
        cached = np.load(args.cache)
        val_probs, val_gold, test_probs, test_gold = (cached[k] for k in ("vp", "vg", "tp", "tg"))
    else:
        val_probs, val_gold = split_arrays(run, "validation")
        test_probs, test_gold = split_arrays(run, "test")
        if args.cache:
            np.savez(args.cache, vp=val_probs, vg=val_gold, tp=test_probs, tg=test_gold)
    rows = {}
    print(f"{'choice':<11} {'macro-F1':>8} {'micro-F1':>8} {'subset':>7} {'min thr':>7} {'most':>4} {'>4':>3}")
    for name, kwargs in CHOICES.items():
        row = judge(fit_thresholds(val_probs, val_gold, **kwargs), test_probs, test_gold)
        row["on_validation_macro_f1"] = judge(fit_thresholds(val_probs, val_gold, **kwargs), val_probs, val_gold)[
            "macro_f1"
        ]
        rows[name] = row
        print(
            f"{name:<11} {row['macro_f1']:>8.4f} {row['micro_f1']:>8.4f} {row['subset_accuracy']:>7.4f} "
            f"{row['min_threshold']:>7.3f} {row['max_labels_first']:>4} {row['over_labelled_first']:>3}"
        )
    m = machine()
    print(f"default: shrink-{SHRINKAGE:g}; {describe(m)}; {time.perf_counter() - started:.0f} s")
    if args.json:
        record = {
            "command": " ".join(["python", "benchmarks/bench_thresholds.py", args.run]),
            "machine": m,
            "run": str(args.run),
            "validation_texts": len(val_gold),
            "test_texts": len(test_gold),
            "default": f"shrink-{SHRINKAGE:g}",
            "choices": rows,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
