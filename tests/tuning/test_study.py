"""Tests for loratune.tuning: a study on a tiny model (defaults first, pruning, outputs), resuming after SIGKILL,
two processes on one storage, and bad input."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_config

import loratune
from loratune import load_config
from loratune.cli import main
from loratune.runs.folder import load_run
from loratune.tuning.space import default_point, search_space
from loratune.tuning.study import TuneOptions, tune

pytest.importorskip("optuna", reason="the tune extra (CI installs it)")


def trials(folder: Path) -> list[dict[str, str]]:
    with (folder / "trials.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_study_tries_the_defaults_first_prunes_and_leaves_a_config_that_reproduces_its_best(
    tiny_bert, data_dir, tmp_path
):
    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "unused", train__num_epochs=3)
    options = TuneOptions(output_dir=tmp_path / "study", n_trials=6, pruner="median")
    summary = tune(cfg, options)
    rows = trials(tmp_path / "study")
    assert sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows) == 6
    space = search_space(cfg, 3)  # with a pruner, every trial gets the same epochs and the pruner cuts them
    first = {k.removeprefix("param "): v for k, v in rows[0].items() if k.startswith("param ")}
    assert first == {k: str(v) for k, v in default_point(cfg, space).items()}
    assert summary["best"]["validation"] >= float(rows[0]["value"])  # never worse than not tuning
    for row in rows:
        epochs = row["epoch values"].split()
        assert (len(epochs) < 3) == (row["state"] == "PRUNED"), row
    assert not (tmp_path / "study" / "trials").exists() or not any((tmp_path / "study" / "trials").iterdir())
    # the best configuration, trained again from its YAML as `loratune train --config` runs it, gives the best
    # trial's validation score to the digits a run reports
    best = load_config(str(tmp_path / "study" / "best_config.yaml"), [f"train.output_dir={tmp_path / 'again'}"])
    again = loratune.run(best)
    assert f"{again.summary.history[-1].val_f1:.4f}" == f"{summary['best']['validation']:.4f}"
    assert load_run(tmp_path / "study" / "best").summary.history[-1].val_f1 == again.summary.history[-1].val_f1
    for name in ("tune.md", "tune.html", "tune.json", "tune_history.png"):
        assert (tmp_path / "study" / name).is_file(), name


def _cli(tiny_bert, data_dir, folder, *extra):
    return [
        sys.executable, "-m", "loratune", "tune", "--model", str(tiny_bert), "--data", str(data_dir), "--epochs", "2",
        "--batch-size", "8", "--device", "cpu", "--precision", "fp32", "--output-dir", str(folder), *extra,
    ]  # fmt: skip


def test_a_killed_study_resumes_to_exactly_its_trials(tiny_bert, data_dir, tmp_path):
    folder = tmp_path / "study"
    child = subprocess.Popen(_cli(tiny_bert, data_dir, folder, "--n-trials", "4"), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # killed inside its second trial
        if (folder / "trials" / "trial_001").exists():
            break
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = subprocess.run(
        _cli(tiny_bert, data_dir, folder, "--n-trials", "4", "--resume"), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    rows = trials(folder)
    counted = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    assert len(counted) == 4
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert all("interrupted" in r["reason"] for r in failed)


def test_two_processes_on_one_storage_share_the_trials(tiny_bert, data_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    children = [
        subprocess.Popen(
            _cli(tiny_bert, data_dir, tmp_path / f"worker{i}", "--n-trials", "5", "--storage", storage),
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    for child in children:
        assert child.wait(timeout=600) == 0, child.stderr.read()
    import optuna

    study = optuna.load_study(study_name="loratune", storage=storage)
    counted = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == 5
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert {t.user_attrs.get("reason", "") for t in study.trials if t.state.name == "FAIL"} <= {
        "not run: the study had its trials"
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n-trials", "0"], "--n-trials must be at least 1"),
        (["--metric", "micro_f1"], "is not one the validation split reports"),
        (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot be opened"),
        (["--space", "{bad_key}"], "is not a config key"),
        (["--space", "{empty}"], "is empty"),
        (["--n-trials", "1"], "holds a study already; continue it with --resume"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(tiny_bert, data_dir, tmp_path, capsys, extra, message):
    (tmp_path / "bad.yaml").write_text("train.learning_rat: [0.001]\n")
    (tmp_path / "empty.yaml").write_text("train.learning_rate: {low: 0.01, high: 0.001}\n")
    paths = {"bad_key": tmp_path / "bad.yaml", "empty": tmp_path / "empty.yaml"}
    if "1" in extra:  # a folder that holds a study
        (tmp_path / "study").mkdir()
        (tmp_path / "study" / "study.db").write_bytes(b"")
    argv = _cli(tiny_bert, data_dir, tmp_path / "study", *[a.format(**paths) for a in extra])[3:]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and message in err, err


def test_epochs_are_searched_only_without_a_pruner(tiny_bert, data_dir, tmp_path):
    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "unused")
    assert "train.num_epochs" not in search_space(cfg, 3)
    assert search_space(cfg, 3, epochs_searched=True)["train.num_epochs"].high == 3
    (tmp_path / "space.yaml").write_text("lora.r: [16, 64]\ntrain.weight_decay: null\n")
    space = search_space(cfg, 3, tmp_path / "space.yaml")
    assert space["lora.r"].choices == (16, 64) and "train.weight_decay" not in space
