"""Experiment tracking through Accelerate: `--report-to tensorboard` and `--report-to mlflow` (local file store)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import tiny_config

import loratune
from loratune.cli import main

EPOCHS = 2
PER_EPOCH = ("train_loss", "learning_rate", "val_loss", "val_accuracy", "val_f1")


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return found


def test_tensorboard_logs_loss_learning_rate_and_validation_metrics_per_epoch(tiny_bert, data_dir, tmp_path):
    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "run", train__num_epochs=EPOCHS, train__report_to="tensorboard")
    run = loratune.run(cfg)
    logs = run.run_dir / "logs"
    assert any(logs.rglob("events.out.tfevents.*")), f"no event files under {logs}"
    scalars = _scalars(logs)
    for tag in PER_EPOCH:
        assert tag in scalars, f"{tag} missing; logged: {sorted(scalars)}"
        assert sorted(step for step, _ in scalars[tag]) == list(range(1, EPOCHS + 1)), (tag, scalars[tag])
    for entry in run.summary.history:
        logged = dict(scalars["val_accuracy"])[entry.epoch]
        assert logged == pytest.approx(entry.val_accuracy, abs=1e-6)
        assert dict(scalars["train_loss"])[entry.epoch] == pytest.approx(entry.train_loss, rel=1e-5)
    assert "test_accuracy" in scalars


def test_cli_report_to_tensorboard(tiny_bert, data_dir, tmp_path, capsys):
    argv = ["train", "--data", str(data_dir), "--model", str(tiny_bert), "--output-dir", str(tmp_path / "run")]
    argv += ["--epochs", "1", "--no-progress", "--report-to", "tensorboard", "train.device=cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "val_loss" in _scalars(tmp_path / "run" / "logs")


def test_no_tracker_writes_no_logs(tiny_bert, data_dir, tmp_path):
    run = loratune.run(tiny_config(tiny_bert, data_dir, tmp_path / "run", train__num_epochs=1))
    assert not (run.run_dir / "logs").exists()


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (optional tracker)")
def test_mlflow_logs_to_a_local_file_store(tiny_bert, data_dir, tmp_path, monkeypatch):
    import mlflow

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3.x wants a database unless told otherwise
    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "run", train__num_epochs=EPOCHS, train__report_to="mlflow")
    loratune.run(cfg)
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
    assert "train_loss" in runs[0].data.metrics and "learning_rate" in runs[0].data.metrics
