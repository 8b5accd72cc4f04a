"""Scoring with several processes: each scores every n-th batch, once, and all get every result back in the
loader's order, whatever the batch sizes and however few the batches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loratune.scoring.inference import _shard, predict_logits

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "score_shards.py"
TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


def test_each_process_takes_every_nth_batch_and_all_run_as_many_forward_passes():
    assert [_shard(7, r, 2) for r in (0, 1)] == [[0, 2, 4, 6], [1, 3, 5, -1]]
    assert [_shard(1, r, 3) for r in (0, 1, 2)] == [[0], [-1], [-1]]  # fewer batches than processes
    assert [_shard(0, r, 2) for r in (0, 1)] == [[], []]
    for batches in range(9):
        shards = [_shard(batches, r, 3) for r in range(3)]
        assert len({len(s) for s in shards}) == 1
        assert sorted(b for s in shards for b in s if b >= 0) == list(range(batches))  # each exactly once


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun is not installed")
@pytest.mark.parametrize(("processes", "sizes"), [(2, "3,1,2"), (2, "4,4,4,4,1"), (3, "2"), (2, "1")])
def test_several_processes_return_exactly_what_one_process_scores(tmp_path, processes, sizes):
    sys.path.insert(0, str(HELPER.parent))
    try:
        from score_shards import Model, loader
    finally:
        sys.path.pop(0)
    single_logits, single_labels = predict_logits(Model(), loader([int(s) for s in sizes.split(",")]))

    out = tmp_path / "scores.npz"
    cmd = [TORCHRUN, "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(_free_port()), str(HELPER), str(out), sizes]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(out)
    assert int(got["processes"]) == processes
    np.testing.assert_array_equal(got["labels"], single_labels)  # every example once, in the loader's order
    np.testing.assert_array_equal(got["logits"], single_logits)
