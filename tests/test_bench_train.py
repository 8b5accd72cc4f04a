"""The benchmark compares like with like: loratune gets the anchors' LoRA layers, learning rate and batch size."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_train", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_loratune_runs_with_the_anchor_settings(tmp_path):
    bench = _bench()
    args = bench.parse_args(["--learning-rate", "3e-4", "--batch-size", "16"])
    argv = bench.loratune_argv(tmp_path / "data", tmp_path / "run", args, precision=None)
    flags = dict(zip(argv, argv[1:], strict=False))
    assert flags["--learning-rate"] == "0.0003"
    assert flags["--batch-size"] == "16"
    assert flags["--target-modules"] == "query,value"
    assert flags["--lora-r"] == "8" and flags["--lora-alpha"] == "16"
    assert "--precision" not in flags  # the default row measures loratune's own precision choice
