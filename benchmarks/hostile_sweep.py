"""The hostile sweep: every case of tests/hostile (data files, flags, configs, run-folder damage, predict input,
output destinations), run in this process against a fresh copy of a small world, with the count of each verdict.

    python benchmarks/hostile_sweep.py [--json results.json] [--only KIND]

Promised: 0 silent wrong results, 0 files lost, 0 tracebacks, 0 hangs (see tests/hostile/sweep.py for what each
verdict means); the exit status is 1 when any case fails. The signal cases run in tests/hostile/test_sweep.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from hostile.cases_inputs import config_cases, data_cases, flag_cases  # noqa: E402
from hostile.cases_outputs import destination_cases, predict_cases, run_cases  # noqa: E402
from hostile.sweep import VERDICTS, build_base, run_case, tally  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="Write every case's verdict here.")
    parser.add_argument("--only", help="Run only the cases of this kind (e.g. 'run folder').")
    args = parser.parse_args()
    cases = [*data_cases(), *flag_cases(), *config_cases(), *run_cases(), *predict_cases(), *destination_cases()]
    cases = [c for c in cases if args.only is None or c.kind == args.only]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        base = build_base(Path(folder))
        results = [run_case(case, base) for case in cases]
    for r in results:
        if r.verdict != "pass":
            print(f"{r.verdict:>12}  {r.case.kind:<14} {r.case.name}: {r.detail}")
    by_kind: dict[str, dict[str, int]] = {}
    for r in results:
        by_kind.setdefault(r.case.kind, dict.fromkeys(VERDICTS, 0))[r.verdict] += 1
    print(f"\n{'kind':<14}" + "".join(f"{v:>14}" for v in VERDICTS))
    for kind, counts in [*by_kind.items(), ("all", tally(results))]:
        print(f"{kind:<14}" + "".join(f"{counts[v]:>14}" for v in VERDICTS))
    slowest = max(results, key=lambda r: r.seconds)
    print(
        f"\n{len(results)} cases in {time.perf_counter() - started:.0f} s; "
        f"slowest {slowest.seconds:.1f} s ({slowest.case.name})"
    )
    if args.json:
        rows = [
            {
                "case": r.case.name,
                "kind": r.case.kind,
                "verdict": r.verdict,
                "detail": r.detail,
                "seconds": round(r.seconds, 2),
            }
            for r in results
        ]
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r.verdict == "pass" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
