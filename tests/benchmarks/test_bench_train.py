"""The benchmark compares like with like: loratune gets the anchors' LoRA layers, learning rate and batch size."""

import importlib.util
import sys

from conftest import REPO

BENCH = REPO / "benchmarks" / "bench_train.py"


def _bench():
    sys.path.insert(0, str(BENCH.parent))  # bench_train imports its sibling _models, as when run as a script
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_train", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_loratune_runs_with_the_anchor_settings(tmp_path):
    bench = _bench()
    args = bench.parse_args(["--learning-rate", "3e-4", "--batch-size", "16", "--device", "cuda"])
    args.model_path = tmp_path / "model"
    argv = bench.loratune_argv(tmp_path / "data", tmp_path / "run", args)
    flags = dict(zip(argv, argv[1:], strict=False))
    assert flags["--learning-rate"] == "0.0003"
    assert flags["--batch-size"] == "16"
    assert flags["--target-modules"] == "query,value"
    assert flags["--lora-r"] == "8" and flags["--lora-alpha"] == "16"
    assert "--precision" not in flags  # the default row measures loratune's own precision choice
    assert flags["--model"] == str(tmp_path / "model") and flags["--device"] == "cuda"


def test_the_tiny_proxy_model_is_a_headless_two_layer_bert(tmp_path):
    bench = _bench()
    from _models import model_dir
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir("tiny", tmp_path))
    assert (config.num_hidden_layers, config.hidden_size) == (2, 64)
    assert config.architectures == ["BertModel"]  # no head: loratune and the anchor both add a fresh one
    assert bench.parse_args(["--model", "tiny"]).model == "tiny"


def test_ms_per_step_counts_optimizer_steps(tmp_path):
    bench = _bench()
    args = bench.parse_args(["--batch-size", "32", "--epochs", "2"])
    row = bench.Row("loratune", n_train=100, train_samples_per_s=200.0)  # 4 steps an epoch, 1 s of training
    assert bench._ms_per_step(row, args) == 1000 * 1.0 / 8
