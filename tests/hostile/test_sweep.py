"""The hostile sweep (tests/hostile): every case a test of its own, so a failure names its case; the same cases run
from `benchmarks/hostile_sweep.py`, which prints the counts. Signals need a process of their own: they are here too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hostile.cases_inputs import config_cases, data_cases, flag_cases
from hostile.cases_outputs import destination_cases, predict_cases, run_cases
from hostile.sweep import build_base, run_case

CASES = [*data_cases(), *flag_cases(), *config_cases(), *run_cases(), *predict_cases(), *destination_cases()]


def test_the_sweep_has_at_least_200_cases_of_every_kind():
    kinds = {case.kind for case in CASES}
    assert len(CASES) >= 200 and {"data", "labels", "flags", "config", "run folder", "destination"} <= kinds
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case(case, base):
    result = run_case(case, base)
    assert result.verdict == "pass", f"{result.verdict}: {result.detail}"


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_training_keeps_the_epochs_and_says_how_to_resume(base, tmp_path, signum, status):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "loratune", "train", "--data", str(base.data), "--model", str(base.model)]
    cmd += ["--output-dir", str(out), "--epochs", "100000", "--no-progress", "--precision", "fp32", "--device", "cpu"]
    child = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    state, deadline = out / "checkpoint" / "state.json", time.monotonic() + 60
    while not state.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == status and "Traceback" not in err, err[-2000:]
    assert f"Continue with: loratune train --resume {out}" in err.strip().splitlines()[-1]
    assert json.loads(state.read_text())["state"]["epoch"] >= 1 and not (out / "COMPLETE").exists()
