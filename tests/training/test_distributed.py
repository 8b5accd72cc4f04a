"""`loratune train` scales out through Accelerate: two CPU processes (gloo) started by torchrun, no code of ours
for process groups."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import tiny_config

from loratune.runs.files import load_summary


def free_port() -> int:
    """A TCP port nothing listens on now: the one the OS hands out for port 0, released again for torchrun."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="torchrun is not installed",
)
def test_two_processes_write_one_run_folder_with_single_process_metrics(tmp_path, tiny_bert, data_dir):
    from loratune.training.recipe import run

    # Plain shuffling (no length groups): two processes with half the batch then see exactly the single run's
    # batches, split in two, and average the same gradients; only float rounding differs.
    single = run(
        tiny_config(tiny_bert, data_dir, tmp_path / "single", train__num_epochs=4, train__group_by_length=False)
    )

    run_dir = tmp_path / "ddp"
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    # Half the per-process batch, so the global batch (and the number of optimizer steps) matches the single run.
    cmd = [
        torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "loratune", "train",
        "--data", str(data_dir), "--model", str(tiny_bert), "--output-dir", str(run_dir),
        "--epochs", "4", "--batch-size", "4", "--learning-rate", "5e-3", "--precision", "fp32",
        "--device", "cpu", "--no-progress", "--no-group-by-length",
    ]  # fmt: skip
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    summary = load_summary(run_dir)
    assert summary.num_processes == 2
    assert (run_dir / "COMPLETE").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]  # one folder, written once
    assert summary.after.num_samples == single.after.num_samples  # every test example scored once
    assert [h.epoch for h in summary.history] == [1, 2, 3, 4]
    for mine, theirs in zip(summary.history, single.summary.history, strict=True):
        assert mine.train_loss == pytest.approx(theirs.train_loss, abs=0.005)
        assert mine.val_loss == pytest.approx(theirs.val_loss, abs=0.005)
