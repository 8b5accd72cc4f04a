"""A run killed after its first epoch resumes from the checkpoint and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import tiny_config

from loratune.cli import main
from loratune.runs.files import CONFIG_FILE, load_summary

SCORES = ("accuracy", "precision", "recall", "f1")


def _kill_after_first_checkpoint(cfg_yaml: Path) -> int:
    """Train in a child process that SIGKILLs itself right after writing its first end-of-epoch checkpoint."""
    script = textwrap.dedent(
        f"""
        import os, signal
        import loratune.training.loop as train
        from loratune.config import load_config
        from loratune.training.recipe import run
        real_save = train.save_checkpoint
        def save_then_die(*args, **kwargs):
            real_save(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        train.save_checkpoint = save_then_die
        run(load_config({str(cfg_yaml)!r}))
        """
    )
    return subprocess.run([sys.executable, "-c", script], env=os.environ | {"HF_HUB_OFFLINE": "1"}).returncode


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_killed_run_resumes_to_the_same_metrics_as_an_uninterrupted_run(tmp_path, tiny_bert, data_dir, precision):
    from loratune.training.recipe import run

    uninterrupted = run(
        tiny_config(tiny_bert, data_dir, tmp_path / "full", train__num_epochs=3, train__precision=precision)
    )

    run_dir = tmp_path / "killed"
    cfg = tiny_config(tiny_bert, data_dir, run_dir, train__num_epochs=3, train__precision=precision)
    cfg_yaml = tmp_path / "cfg.yaml"
    cfg_yaml.write_text(cfg.to_yaml())
    assert _kill_after_first_checkpoint(cfg_yaml) == -9
    assert (run_dir / "checkpoint" / "state.json").is_file()
    assert not (run_dir / "COMPLETE").exists()
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["state"]["epoch"] == 1

    assert main(["train", "--resume", str(run_dir)]) == 0

    resumed = load_summary(run_dir)
    assert (run_dir / "COMPLETE").exists()
    assert not (run_dir / "checkpoint").exists() and not (run_dir / "before.json").exists()
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    assert resumed.after.confusion_matrix == uninterrupted.after.confusion_matrix
    for key in SCORES:
        assert getattr(resumed.after, key) == pytest.approx(getattr(uninterrupted.after, key))
        assert getattr(resumed.before, key) == pytest.approx(getattr(uninterrupted.before, key))
    for mine, theirs in zip(resumed.history, uninterrupted.summary.history, strict=True):
        assert mine.train_loss == pytest.approx(theirs.train_loss, rel=1e-5)


def test_a_full_run_from_before_the_heads_own_rate_resumes_once_told_its_rate(tmp_path, tiny_bert, data_dir, capsys):
    run_dir = tmp_path / "old"
    cfg = tiny_config(tiny_bert, data_dir, run_dir, lora__method="full", train__head_learning_rate=5e-3)
    cfg_yaml = tmp_path / "cfg.yaml"
    cfg_yaml.write_text(cfg.to_yaml())
    assert _kill_after_first_checkpoint(cfg_yaml) == -9
    saved = run_dir / CONFIG_FILE  # as an older loratune wrote it: one learning rate for every weight
    lines = saved.read_text().splitlines(keepends=True)
    saved.write_text("".join(line for line in lines if "head_learning_rate" not in line))

    assert main(["train", "--resume", str(run_dir)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the data checks' summary line
    assert "groups the optimizer's weights differently" in error and "train.head_learning_rate" in error
    assert main(["train", "--resume", str(run_dir), "train.head_learning_rate=5e-3"]) == 0
    assert (run_dir / "COMPLETE").exists()


def test_resume_of_a_finished_run_is_refused(tmp_path, tiny_bert, data_dir, capsys):
    from loratune.training.recipe import run

    run(tiny_config(tiny_bert, data_dir, tmp_path / "done", train__num_epochs=1))
    assert main(["train", "--resume", str(tmp_path / "done")]) == 2
    assert "already finished" in capsys.readouterr().err


def test_resume_of_a_folder_without_a_run_names_the_problem(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Nothing to resume" in err and len(err.splitlines()) == 1


def test_a_new_run_in_an_unfinished_folder_starts_over_instead_of_resuming(tmp_path, tiny_bert, data_dir):
    from loratune.training.recipe import run

    run_dir = tmp_path / "killed"
    killed = tiny_config(tiny_bert, data_dir, run_dir, train__num_epochs=2, train__learning_rate=5e-2)
    cfg_yaml = tmp_path / "cfg.yaml"
    cfg_yaml.write_text(killed.to_yaml())
    assert _kill_after_first_checkpoint(cfg_yaml) == -9
    stale = json.loads((run_dir / "checkpoint" / "state.json").read_text())["state"]["history"][0]["train_loss"]

    fresh = run(tiny_config(tiny_bert, data_dir, run_dir, train__num_epochs=2, train__learning_rate=1e-3))
    reference = run(tiny_config(tiny_bert, data_dir, tmp_path / "ref", train__num_epochs=2, train__learning_rate=1e-3))
    first = fresh.summary.history[0].train_loss
    assert first == pytest.approx(reference.summary.history[0].train_loss)
    assert first != pytest.approx(stale)


@pytest.mark.parametrize(
    ("signum", "status", "said"), [("SIGINT", 130, "interrupted;"), ("SIGTERM", 143, "terminated (SIGTERM);")]
)
def test_ctrl_c_or_sigterm_stops_with_a_resume_hint_and_the_run_resumes(
    tmp_path, tiny_bert, data_dir, signum, status, said
):
    import signal
    import time

    run_dir = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "loratune", "train", "--data", str(data_dir), "--model", str(tiny_bert)]
    cmd += [
        "--output-dir",
        str(run_dir),
        "--epochs",
        "100000",
        "--batch-size",
        "8",
        "--precision",
        "fp32",
        "--no-progress",
    ]
    child = subprocess.Popen(cmd, env=os.environ | {"HF_HUB_OFFLINE": "1"}, stderr=subprocess.PIPE, text=True)
    state = run_dir / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(getattr(signal, signum))
    _, err = child.communicate(timeout=120)
    assert child.returncode == status, err[-2000:]
    assert f"{said} finished epochs are saved. Continue with: loratune train --resume {run_dir}" in err
    assert "Traceback" not in err
    assert not (run_dir / "COMPLETE").exists()
    finished = json.loads(state.read_text())["state"]["epoch"]
    assert 1 <= finished < 200

    assert main(["train", "--resume", str(run_dir), "train.num_epochs=" + str(finished + 1)]) == 0
    assert [h.epoch for h in load_summary(run_dir).history] == list(range(1, finished + 2))
