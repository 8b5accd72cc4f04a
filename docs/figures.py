"""Every measured figure the README and docs/ quote: run the commands, store the figures, update the text.

    python docs/figures.py                  # every experiment (about 65 minutes on 2 idle cores), then the text
    python docs/figures.py readme spam      # only these experiments
    python docs/figures.py --list           # the experiments, their commands and expected minutes
    python docs/figures.py --show           # the quoted passages as the stored figures render them

Each experiment runs the commands a user would type (`loratune ...` in a fresh process, from the repository root),
reads the run folders they leave, and stores its figures in `docs/figures.json` with the commands, the CPU (model
and the instruction sets that change bf16 speed), the core count and the date. Each quoted passage is rendered from
the stored figures; after a new measurement the script replaces the old rendering with the new one in the file
that quotes it, and `tests/docs/test_figures.py` checks that every passage still reads as the stored figures
render it, and that no other measured-looking number has crept into the text.

Machine dependence: timings (seconds, minutes, speed ratios, memory) depend on the CPU and on what else runs;
metrics depend on the CPU only in their last digits (bf16 kernels and float sums differ between CPUs and thread
counts; on one CPU with the same threads a run repeats to the last digit). `TOLERANCE` says how far a rerun on
another machine may stray before a figure is wrong rather than machine-dependent.

Run it on a quiet machine: a second CPU-heavy process slows every timing and changes the thread count loratune
picks, and with it the last digits of the metrics.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STORE = REPO / "docs" / "figures.json"
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "docs"))
from _machine import describe, machine  # noqa: E402
from experiments import EXPERIMENTS, Experiment  # noqa: E402, F401  (Experiment: for tests and new experiments)

# How far a rerun may stray: metrics (fractions) absolutely, timings and memory relatively. Same CPU and thread
# count: metrics exactly.
TOLERANCE = {"metric": 0.01, "timing": 0.5, "memory": 0.15}


# ------------------------------------------------------------------------------------------------------ the store


def load_store() -> dict[str, Any]:
    return json.loads(STORE.read_text()) if STORE.exists() else {}


def rendered(store: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(experiment, file, passage) for every quote whose experiment has stored figures."""
    out = []
    for e in EXPERIMENTS:
        if e.name in store:
            out += [(e.name, file, render(store[e.name]["figures"])) for file, render in e.quotes]
    return out


def rewrite_docs(name: str, old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Replace each passage rendered from `old` with its rendering from `new`; returns the passages not found."""
    missing = []
    experiment = next(e for e in EXPERIMENTS if e.name == name)
    for file, render in experiment.quotes:
        path = REPO / file
        text, fresh = path.read_text(), render(new)
        stale = render(old) if old is not None else None
        placeholder = f"[[figure {name}.{render.__name__}]]"
        if stale is not None and stale in text:
            path.write_text(text.replace(stale, fresh))
        elif placeholder in text:  # a passage written before its first measurement
            path.write_text(text.replace(placeholder, fresh))
        elif fresh not in text:
            missing.append(f"{file} ({render.__name__}):\n{fresh}")
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the docs' figures and update the text that quotes them.")
    parser.add_argument("experiments", nargs="*", help="names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the experiments and their commands")
    parser.add_argument("--show", action="store_true", help="print each quoted passage from the stored figures")
    args = parser.parse_args()
    store = load_store()
    if args.list:
        for e in EXPERIMENTS:
            print(f"{e.name} (~{e.minutes:g} min): " + "; ".join(e.commands))
        return
    if args.show:
        for name, file, passage in rendered(store):
            print(f"--- {name} -> {file}\n{passage}\n")
        return
    unknown = [n for n in args.experiments if n not in {e.name for e in EXPERIMENTS}]
    if unknown:
        sys.exit(f"error: unknown experiment {unknown[0]!r}; choose from {', '.join(e.name for e in EXPERIMENTS)}.")
    chosen = [e for e in EXPERIMENTS if not args.experiments or e.name in args.experiments]
    if shutil.which("loratune") is None:
        sys.exit("error: the loratune command is not on PATH; install the project (pip install -e .) first.")
    missing: list[str] = []
    for e in chosen:
        print(f"{e.name}: about {e.minutes:g} minutes", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"figures-{e.name}-") as work:
            started = time.perf_counter()
            figures = e.measure(Path(work))
        old = store.get(e.name, {}).get("figures")
        store[e.name] = {
            "commands": e.commands,
            "machine": machine(),
            "minutes": round((time.perf_counter() - started) / 60, 1),
            "figures": figures,
        }
        STORE.write_text(json.dumps(store, indent=1, ensure_ascii=False) + "\n")  # after each: a crash loses one
        missing += rewrite_docs(e.name, old, figures)
        print(f"  stored; {describe(store[e.name]['machine'])}", flush=True)
    if missing:
        print("\nThese passages are not in the docs yet; put them where they belong:\n", file=sys.stderr)
        print("\n\n".join(missing), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
